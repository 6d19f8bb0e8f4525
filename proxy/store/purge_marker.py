"""Purge markers: a purge that lands while a fetch is in flight is not undone by that fetch's store.

Every purge takes the next number of a sequence in Redis and leaves it, for a short while, in a
marker beside what it purged. A fetch reads the sequence before it asks upstream, and stores
with a script that refuses when a marker it names is newer than that reading. There is one
sequence per hash slot, and an entry's marker lives in the entry's slot (`co_located`), so the
script names keys of one slot only: a Redis Cluster runs it on the node owning the entry, and a
single Redis runs the same keys. The store names the entry's own marker; a purge by tag can
mark a key of the tag the same way and a store of an entry carrying the tag name that mark too,
as long as the mark is in the entry's slot (see `PurgeMarkers.purge(marks=)` and `store(marks=)`).
"""

import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import redis

from proxy.errors import StoreUnavailable
from proxy.store.connection import RedisHealth, get, pipelined
from proxy.store.fetch_lock import Held, co_located, key_slot, slot_tag

log = logging.getLogger(__name__)

# A NUL cannot occur in a client's key (control characters are refused), so no client key can
# name, read or overwrite the sequence or a marker.
SEQUENCE = "\x00purge-seq"
MARK = "\x00purged"

# Deletes first: DEL is allowed over maxmemory, and once the script has written, Redis lets its
# later writes through too. The marks use pcall all the same: a purge must not fail for them.
# A lost sequence (evicted, flushed) starts again from the server's time in microseconds, so it
# never repeats a number a fetch in flight may hold. Numbers go to SET as strings: Lua's numbers
# are doubles and print large ones in exponent form.
_PURGE = """
local marks = tonumber(ARGV[2])
local removed = 0
for i = marks + 2, #KEYS do removed = removed + redis.call('DEL', KEYS[i]) end
if redis.call('EXISTS', KEYS[1]) == 0 then
  local now = redis.call('TIME')
  redis.pcall('SET', KEYS[1], now[1] .. string.format('%06d', tonumber(now[2])))
end
local seq = redis.pcall('INCR', KEYS[1])
if type(seq) == 'number' then
  seq = string.format('%d', seq)
  for i = 2, marks + 1 do redis.pcall('SET', KEYS[i], seq, 'PX', ARGV[1]) end
end
return removed
"""

# A sequence below the fetch's reading was lost since: the order is unknown, refuse.
# The EXISTS reads the key back in the script, so a client that tracks its reads (L1
# invalidation) is told when the stored entry changes later: the SET ended that tracking.
# KEYS[3] is the fetch lock, deleted if it still holds the fetch's token (ARGV[4], '' for none:
# https://redis.io/docs/latest/commands/set/ "a simple locking pattern"), stored or refused:
# after the SET, so that a write refused over maxmemory (OOM) leaves it to the caller's release.
_STORE = """
local start = tonumber(ARGV[3])
local stored = tonumber(redis.call('GET', KEYS[2]) or '0') >= start
for i = 4, #KEYS do
  if stored then
    local mark = redis.call('GET', KEYS[i])
    if mark and tonumber(mark) > start then stored = false end
  end
end
if stored then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  redis.call('EXISTS', KEYS[1])
end
if ARGV[4] ~= '' and redis.call('GET', KEYS[3]) == ARGV[4] then redis.call('DEL', KEYS[3]) end
if stored then return 1 end
return 0
"""


def marker_key(redis_key: str) -> str:
    """The purge marker of an entry, in the entry's hash slot."""
    return co_located(redis_key, MARK)


def slot_key(prefix: str, slot: int, name: str) -> str:
    """`prefix` + `name` made a key of hash slot `slot`: one such key per slot (the sequence,
    or a mark a purge by tag leaves in each slot)."""
    key = f"{prefix}{{{slot_tag(slot)}}}{name}"
    # A prefix holding an unclosed '{' would swallow the tag: then the tag goes first.
    return key if key_slot(key) == slot else f"{{{slot_tag(slot)}}}{prefix}{name}"


@dataclasses.dataclass(frozen=True)
class Start:
    """Where the purge sequence stood when a fetch began."""

    seq: int
    at: float  # the marker clock (monotonic) at that moment


class PurgeMarkers:
    """Purge with a marker; store only when nothing the store names was purged since `start()`.

    Markers live `lifetime` seconds; a store more than half of that after its `start()` is
    refused, since a marker it should have seen may be gone (a fetch is bounded well below it).

    Numbers of different slots are not comparable: a start, a marker and a mark are compared
    only within one slot's sequence, which is what keeps the guarantees (a store is refused when
    its entry was purged after its fetch began; a lost sequence refuses the stores begun before).
    """

    def __init__(self, client: redis.Redis, health: RedisHealth, prefix: str, lifetime: float,
                 timer: Callable[[], float] = time.monotonic):
        self.client = client
        self.health = health
        self.prefix = prefix
        self.lifetime = lifetime
        self.timer = timer
        self._purge = client.register_script(_PURGE)
        self._store = client.register_script(_STORE)
        slot_tag(0)  # build the slot table now, not on the first request

    def sequence_key(self, redis_key: str) -> str:
        """The purge sequence of `redis_key`'s hash slot."""
        return slot_key(self.prefix, key_slot(redis_key), SEQUENCE)

    def start(self, redis_key: str) -> Start | None:
        """Take it before asking upstream for `redis_key`; None when Redis cannot say (then
        nothing is stored)."""
        try:
            raw = self.health.call(lambda: get(self.client, self.sequence_key(redis_key)))
        except (StoreUnavailable, redis.RedisError) as exc:
            raw = exc
        return self.start_of(raw)

    def start_of(self, raw: Any) -> Start | None:
        """The start from the sequence's value as read (`sequence_key`'s GET: its bytes, None,
        or the exception that stopped the read): None when it says nothing."""
        try:
            if isinstance(raw, Exception):
                raise raw
            return Start(int(raw or 0), self.timer())
        except (StoreUnavailable, redis.RedisError, ValueError) as exc:
            log.debug("could not read the purge sequence: %s", exc)
            return None

    def purge(self, keys: Iterable[str], marks: Iterable[str] = ()) -> int:
        """Delete `keys` and mark them, and the keys `marks` (a tag's, say), purged now: one
        atomic step per hash slot, each taking its number from that slot's sequence. Returns how
        many keys were deleted; raises what the Redis call raises."""
        by_slot: dict[int, tuple[list[str], list[str]]] = {}
        for key in keys:
            deleted, markers = by_slot.setdefault(key_slot(key), ([], []))
            deleted.append(key)
            markers.append(marker_key(key))
        for mark in marks:
            by_slot.setdefault(key_slot(mark), ([], []))[1].append(mark)
        lifetime_ms = max(1, int(self.lifetime * 1000))
        removed = 0
        for slot, (deleted, markers) in by_slot.items():
            removed += int(self.health.call(functools.partial(
                self._purge, keys=[slot_key(self.prefix, slot, SEQUENCE), *markers, *deleted],
                args=[lifetime_ms, len(markers)])))
        return removed

    def store(self, redis_key: str, value: bytes, ttl: int, start: Start,
              marks: Iterable[str] = (), lock: Held | None = None) -> bool:
        """SET redis_key value EX ttl, unless redis_key (or a key in `marks`) was purged after
        `start`; and, stored or not, the fetch lock `lock` (a key of redis_key's slot) released in
        the same script (`lock.released`). Whether it was stored; raises what the Redis call
        raises (the lock is then left held, for the caller to release).

        `start` must be `start(redis_key)`, and every mark must be a key of redis_key's hash
        slot (ValueError otherwise, in a cluster and with one Redis alike): the script compares
        a mark with that slot's sequence, and a cluster runs it on one node. A purge by tag
        that wants in-flight stores of its entries refused therefore marks the tag in every slot
        a tagged entry may be stored in, e.g. `slot_key(prefix, slot, "\\0tag:news")` for each
        of the 16384 slots (one purge step per slot), and a store names the one of its slot."""
        marks = list(marks)
        slot = key_slot(redis_key)
        # No lock held: the entry's marker stands in the lock's place, untouched without a token.
        lock_key, token = (lock.key, lock.token) if lock and lock.token else (marker_key(redis_key), "")
        foreign = [mark for mark in (*marks, lock_key) if key_slot(mark) != slot]
        if foreign:
            raise ValueError(f"marks {foreign!r} are not in the hash slot of {redis_key!r}")
        if self.timer() - start.at >= self.lifetime / 2:
            log.debug("not storing %s: its fetch outlasted what the purge markers cover", redis_key)
            return False
        keys = [redis_key, slot_key(self.prefix, slot, SEQUENCE), lock_key, marker_key(redis_key),
                *marks]
        args: list[bytes | int | str] = [value, ttl, start.seq, token]
        # EVALSHA straight over the pool (connection.pipelined: no redis-py command machinery);
        # a Redis that has not seen the script (restarted, SCRIPT FLUSH) gets it loaded by
        # redis-py's Script, which then runs it.
        reply = pipelined(self.client, self.health,
                          [("EVALSHA", self._store.sha, len(keys), *keys, *args)])[0]
        if isinstance(reply, redis.exceptions.NoScriptError):
            reply = self.health.call(lambda: self._store(keys=keys, args=args))
        elif isinstance(reply, Exception):
            raise reply
        stored = bool(reply)
        if token and lock is not None:
            lock.released = True
        return stored
