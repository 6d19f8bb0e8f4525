"""Bans (Varnish's `ban`): "every entry of this host whose path matches this glob, fetched
before now, is stale". A ban is one member of a sorted set in Redis, scored by its time, so every
proxy sharing the Redis applies it; nothing is scanned or deleted when it is made: an entry is
checked against the bans when it is read (`BanList.stale_from`), and a matching one fetched
before the ban is reused only as a stale copy (revalidated first, or served under
stale-if-error), exactly as after a soft purge.

Bounded: at most MAX_BANS bans at once (one more is refused, 503), each kept BAN_LIFETIME
seconds, after which an entry stored before it, if it is still stored, is reused again. Each
process reads the list again at most every REFRESH seconds, so a ban made through another proxy
applies here within that; the proxy that takes a ban applies it at once.
"""

import dataclasses
import fnmatch
import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from proxy.cache.target import split
from proxy.errors import StoreUnavailable, TooManyBans
from proxy.store.connection import RedisHealth

log = logging.getLogger(__name__)

KEY = "\x00bans"  # under CACHE_PREFIX: a URL role's explicit key cannot name it (no NUL)
MAX_BANS = 1000
BAN_LIFETIME = 86400.0  # seconds a ban is kept
REFRESH = 1.0  # seconds a process keeps the list it read before reading it again

# Drop the bans past their lifetime, refuse one more than the bound, add, keep the set as long
# as its newest ban. ARGV: member, time, oldest time kept, most, lifetime in ms.
_ADD = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[3])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return -1 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return redis.call('ZCARD', KEYS[1])
"""


@dataclasses.dataclass(frozen=True)
class Ban:
    """Entries whose URL's host matches `host` and whose path and query match `path` (a glob,
    case-sensitive: `*` crosses `/`), fetched before `at` (unix seconds). `host`: a glob of the
    host name, any port ("" = any host); or a site's origin as `host:port` (Target.host_port),
    matched exactly, port included: two sites' origins may be one host on two ports."""

    host: str
    path: str
    at: float

    def matches(self, url: str) -> bool:
        host, authority, target = _parts(url)
        if not self.host:
            named = True
        elif ":" in self.host:  # no host glob holds ':' (the route refuses it): an origin's
            named = authority == self.host
        else:
            named = fnmatch.fnmatchcase(host, self.host)
        return named and fnmatch.fnmatchcase(target, self.path)

    @property
    def member(self) -> str:
        # The time is part of the member: the same ban made twice is two bans (the later wins).
        return f"{self.host}\x00{self.path}\x00{self.at!r}"


@functools.lru_cache(maxsize=4096)
def _parts(url: str) -> tuple[str, str, str]:
    """A canonical URL's host (lower case, no port), its `host:port` (the port always given, as
    Target.host_port) and its path with its query."""
    target = split(url)
    return target.host, target.host_port, (target.path or "/") + ("?" + target.query if target.query else "")


class BanList:
    """The bans in Redis, with this process's copy of them (read at most every REFRESH s)."""

    def __init__(self, client: Any, health: RedisHealth, prefix: str,
                 clock: Callable[[], float] = time.time, *, most: int = MAX_BANS,
                 lifetime: float = BAN_LIFETIME):
        self.client = client
        self.health = health
        self.key = prefix + KEY
        self.clock = clock
        self.most = most
        self.lifetime = lifetime
        self._bans: tuple[Ban, ...] = ()
        self._next_read = 0.0  # monotonic time of the next read of Redis
        self._reading = threading.Lock()  # one thread reads; the others use the copy they have
        self._add = client.register_script(_ADD)

    def add(self, host: str, path: str) -> tuple[Ban, int]:
        """Ban `path` of `host` from now on, for every proxy on this Redis: the ban and how many
        are in force. TooManyBans past the bound; StoreUnavailable when Redis cannot be asked."""
        ban = Ban(host.lower(), path, self.clock())
        count = self.health.call(lambda: self._add(
            keys=[self.key], args=[ban.member, repr(ban.at), repr(ban.at - self.lifetime),
                                   self.most, int(self.lifetime * 1000)]))
        if int(count) < 0:
            raise TooManyBans(f"{self.most} bans are in force, each for {self.lifetime:g} s: "
                              "purge by URL, key or tag instead, or wait for the oldest to end")
        self._bans = self._alive(self._bans + (ban,), ban.at)
        return ban, int(count)

    def bans(self) -> tuple[Ban, ...]:
        """The bans in force, as last read (read again when REFRESH has passed)."""
        if time.monotonic() >= self._next_read and self._reading.acquire(blocking=False):
            try:
                self._read()
            finally:
                self._reading.release()
        return self._bans

    def stale_from(self, url: str, stored_at: float) -> float | None:
        """The time of the latest ban that makes an entry of `url` stored at `stored_at` stale,
        or None when none does (the common case: no bans, nothing to match)."""
        bans = self.bans()
        if not bans:
            return None
        oldest, latest = self.clock() - self.lifetime, None  # a ban lasts `lifetime`, to the end
        for ban in bans:
            if ban.at > stored_at and ban.at >= oldest and (latest is None or ban.at > latest) \
                    and ban.matches(url):
                latest = ban.at
        return latest

    def _read(self) -> None:
        now = self.clock()
        self._next_read = time.monotonic() + REFRESH
        try:
            members = self.health.call(lambda: self.client.zrangebyscore(
                self.key, now - self.lifetime, "+inf", withscores=True))
        except (StoreUnavailable, redis.RedisError) as exc:
            log.debug("bans not read again (the last copy is used): %s", exc)
            return
        read = []
        for member, score in members:
            host, _, rest = (member.decode("utf-8", "replace") if isinstance(member, bytes)
                             else str(member)).partition("\x00")
            path = rest.partition("\x00")[0]
            read.append(Ban(host, path, float(score)))
        self._bans = tuple(read)

    def _alive(self, bans: tuple[Ban, ...], now: float) -> tuple[Ban, ...]:
        return tuple(ban for ban in bans if ban.at >= now - self.lifetime)
