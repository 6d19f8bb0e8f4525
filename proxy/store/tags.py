"""Purge by tag: each tag's entries in a Redis set, and a purge generation per tag.

A tag belongs to the origin whose response carried it: what the sets and purge numbers are
keyed by is the *scoped* tag `<origin> <tag>` (`scoped`, the origin `scheme://host:port`), so
one upstream's tag header can neither fill another's tag set (MAX_ENTRIES) nor have its entries
reached by a purge of another's tag. A response's tag header (`Surrogate-Key: news sport`)
records its entry's key in the set `<prefix>\\0tag:<origin> <tag>` when it is stored.
`DELETE /?tag=T` reads that set and purges its members with the purge markers
(proxy.store.purge_marker), so a fetch of one of them in flight does not undo the purge.

A fetch in flight whose answer carries the tag, though, is not in the set yet: its key is added
only when it stores. The choice here is a **tag generation read at fetch start** rather than a
per-slot mark (a mark would have to be left in every slot a tagged entry could be stored in, all
16384 of them, since the purge cannot know where an in-flight entry will land). One counter
(`<prefix>{<n>}\\0tag-seq`) counts tag purges; a purge takes its next number and leaves it
beside the tag (`<prefix>{<n>}\\0tag-purged:<tag>`, in the counter's hash slot, for the purge
markers' lifetime) in one script, then reads the tag's set and purges its members. A fetch reads
the counter (and its entry's purge sequence) before asking upstream; its store then adds its key
to each tag's set, refuses when a tag was purged since its start, and writes through the purge
markers. Whatever the order of a purge and such a store: either the store's check follows the
purge's number and refuses, or the purge's read of the set follows the store's add and names
the key, and its purge then deletes the entry or leaves a marker that refuses the write.

Bounded: at most `max_entries` keys a tag; a set full of live entries refuses a new one (the
entry is then not stored, so a purge never misses it). A set expires with the longest-lived
entry it names, and its members whose entries have expired are dropped when it is full.
"""

import functools
import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any

import redis

from proxy.cache.entry import TAG
from proxy.errors import StoreUnavailable
from proxy.store.connection import RedisHealth, get
from proxy.store.purge_marker import slot_key

log = logging.getLogger(__name__)

SEQUENCE = "\x00tag-seq"
PURGED = "\x00tag-purged:"
SET = "\x00tag:"
COUNTER_SLOT = 0  # the tag counter and the tags' purge numbers share this hash slot
MAX_TAGS = 32  # tags one response may carry; more and it is not stored
MAX_ENTRIES = 10_000  # entries one tag may name
_SEPARATORS = re.compile(r"[ ,\t]+")

# A lost counter (evicted, flushed) starts again from the server's time in microseconds, so it
# never repeats a number a fetch in flight may hold (as the purge markers' sequence does).
_PURGE = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  local now = redis.call('TIME')
  redis.call('SET', KEYS[1], now[1] .. string.format('%06d', tonumber(now[2])))
end
local seq = string.format('%d', redis.call('INCR', KEYS[1]))
redis.call('SET', KEYS[2], seq, 'PX', ARGV[1])
return seq
"""

# Add a key to a tag's set unless the set is full; the set lives as long as its longest entry.
_ADD = """
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[3])
   and redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('SADD', KEYS[1], ARGV[1])
if redis.call('TTL', KEYS[1]) < tonumber(ARGV[2]) then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return 1
"""

# Soft purge: the entry rewritten as stale, only if it is still the one read (KEEPTTL).
_REPLACE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
return 1
"""


def scoped(origin: str, tags: Iterable[str]) -> tuple[str, ...]:
    """The tags as TagIndex keys them: each of `origin` (`scheme://host:port`; a tag has no
    space, so the two never run together)."""
    return tuple(f"{origin} {tag}" for tag in tags)


def tags_of(headers: Mapping[str, str], names: Iterable[str]) -> tuple[str, ...] | None:
    """The tags the headers `names` carry (space- or comma-separated, in order, once each);
    None when there are more than MAX_TAGS or one is not a tag (visible ASCII, 1-256 bytes):
    such a response is not stored, since a purge of the tag it lost could not reach it."""
    tags: dict[str, None] = {}
    for name in names:
        for word in _SEPARATORS.split(headers.get(name, "").strip()):
            if word:
                if not TAG.fullmatch(word):
                    return None
                tags[word] = None
    return tuple(tags) if len(tags) <= MAX_TAGS else None


class TagIndex:
    """The tag sets and purge numbers of one prefix; `lifetime` is the purge markers'. Every
    `tag` it takes is a scoped one (`scoped`)."""

    def __init__(self, client: Any, health: RedisHealth, prefix: str, lifetime: float,
                 max_entries: int = MAX_ENTRIES):
        self.client = client
        self.health = health
        self.prefix = prefix
        self.lifetime = lifetime
        self.max_entries = max_entries
        self.sequence = slot_key(prefix, COUNTER_SLOT, SEQUENCE)
        self._purge = client.register_script(_PURGE)
        self._add = client.register_script(_ADD)
        self._replace = client.register_script(_REPLACE)

    def set_key(self, tag: str) -> str:
        return f"{self.prefix}{SET}{tag}"

    def purged_key(self, tag: str) -> str:
        return slot_key(self.prefix, COUNTER_SLOT, PURGED + tag)

    def start(self) -> int | None:
        """Take it before asking upstream; None when Redis cannot say (then a tagged answer is
        not stored)."""
        try:
            raw = self.health.call(lambda: get(self.client, self.sequence))
        except (StoreUnavailable, redis.RedisError) as exc:
            raw = exc
        return self.start_of(raw)

    def start_of(self, raw: Any) -> int | None:
        """The start from the counter's value as read (`sequence`'s GET: its bytes, None, or the
        exception that stopped the read): None when it says nothing."""
        try:
            if isinstance(raw, Exception):
                raise raw
            return int(raw or 0)
        except (StoreUnavailable, redis.RedisError, ValueError) as exc:
            log.debug("could not read the tag purge counter: %s", exc)
            return None

    def purged_since(self, tags: Iterable[str], start: int) -> bool:
        """Whether a tag of `tags` was purged after `start` (or the counter was lost since, or
        Redis cannot say: True, so the store is refused)."""
        keys = [self.sequence, *(self.purged_key(tag) for tag in tags)]
        try:
            values = self.health.call(lambda: self.client.mget(keys))
            if int(values[0] or 0) < start:
                return True
            return any(value is not None and int(value) > start for value in values[1:])
        except (StoreUnavailable, redis.RedisError, ValueError) as exc:
            log.debug("could not read the tag purge numbers: %s", exc)
            return True

    def add(self, redis_key: str, tags: Iterable[str], ttl: int) -> bool:
        """Name `redis_key` in each tag's set for at least `ttl` seconds; False when a set is
        full of live entries (then the entry must not be stored) or Redis is down. A refusal
        (OOM, READONLY) is raised: the store counts and logs it as any refused write."""
        try:
            for tag in tags:
                set_key = self.set_key(tag)
                added = functools.partial(self._add, keys=[set_key],
                                          args=[redis_key, ttl, self.max_entries])
                if not self.health.call(added):
                    self._drop_expired(set_key)
                    if not self.health.call(added):
                        log.warning("tag %r names %d live entries already: %s not stored",
                                    tag, self.max_entries, redis_key)
                        return False
        except StoreUnavailable as exc:
            log.debug("could not record the tags of %s: %s", redis_key, exc)
            return False
        return True

    def begin_purge(self, tag: str) -> list[str]:
        """Take the next purge number for `tag` (refusing the stores of its fetches in flight),
        then read and forget the keys it names: the caller purges them. Raises what Redis raises."""
        lifetime_ms = max(1, int(self.lifetime * 1000))
        self.health.call(functools.partial(self._purge, keys=[self.sequence, self.purged_key(tag)],
                                           args=[lifetime_ms]))
        set_key = self.set_key(tag)
        members = sorted(member.decode("utf-8", "replace") for member in
                         self.health.call(lambda: self.client.smembers(set_key)))
        if members:
            # SREM, not DEL: a store that added its key since the read stays named.
            self.health.call(lambda: self.client.srem(set_key, *members))
        return members

    def replace(self, redis_key: str, old: bytes, new: bytes) -> bool:
        """SET redis_key new KEEPTTL if it still holds `old`: whether it was replaced."""
        return bool(self.health.call(functools.partial(self._replace, keys=[redis_key],
                                                       args=[old, new])))

    def _drop_expired(self, set_key: str) -> None:
        """Forget the members of a full set whose entries no longer exist."""
        members = list(self.health.call(lambda: self.client.smembers(set_key)))
        pipe = self.client.pipeline(transaction=False)
        for member in members:
            pipe.exists(member)
        gone = [member for member, exists in zip(members, self.health.call(pipe.execute),
                                                  strict=True) if not exists]
        if gone:
            self.health.call(lambda: self.client.srem(set_key, *gone))
