"""Purge markers: a purge that lands while a fetch is in flight is not undone by that fetch's store.

Every purge takes the next number of one sequence in Redis and leaves it, for a short while, in a
marker beside what it purged. A fetch reads the sequence before it asks upstream, and stores
with a script that refuses when a marker it names is newer than that reading. The store names
the entry's own marker; a purge by tag can mark the tag's key the same way and a store of an
entry carrying the tag name that marker too (see `PurgeMarkers.purge(marks=)` and `store(marks=)`).
"""

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable

import redis

from proxy.errors import StoreUnavailable
from proxy.store.connection import RedisHealth

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
_STORE = """
local start = tonumber(ARGV[3])
if tonumber(redis.call('GET', KEYS[2]) or '0') < start then return 0 end
for i = 3, #KEYS do
  local mark = redis.call('GET', KEYS[i])
  if mark and tonumber(mark) > start then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('EXISTS', KEYS[1])
return 1
"""


def marker_key(redis_key: str) -> str:
    return redis_key + MARK


@dataclasses.dataclass(frozen=True)
class Start:
    """Where the purge sequence stood when a fetch began."""

    seq: int
    at: float  # the marker clock (monotonic) at that moment


class PurgeMarkers:
    """Purge with a marker; store only when nothing the store names was purged since `start()`.

    Markers live `lifetime` seconds; a store more than half of that after its `start()` is
    refused, since a marker it should have seen may be gone (a fetch is bounded well below it).
    """

    def __init__(self, client: redis.Redis, health: RedisHealth, prefix: str, lifetime: float,
                 timer: Callable[[], float] = time.monotonic):
        self.client = client
        self.health = health
        self.sequence_key = prefix + SEQUENCE
        self.lifetime = lifetime
        self.timer = timer
        self._purge = client.register_script(_PURGE)
        self._store = client.register_script(_STORE)

    def start(self) -> Start | None:
        """Take it before asking upstream; None when Redis cannot say (then nothing is stored)."""
        try:
            raw = self.health.call(lambda: self.client.get(self.sequence_key))
            return Start(int(raw or 0), self.timer())
        except (StoreUnavailable, redis.RedisError, ValueError) as exc:
            log.debug("could not read the purge sequence: %s", exc)
            return None

    def purge(self, keys: Iterable[str], marks: Iterable[str] = ()) -> int:
        """Delete `keys` and mark them, and the keys `marks` (a tag's, say), purged now: one
        atomic step. Returns how many keys were deleted; raises what the Redis call raises."""
        keys = list(keys)
        markers = [marker_key(key) for key in keys] + list(marks)
        lifetime_ms = max(1, int(self.lifetime * 1000))
        return int(self.health.call(lambda: self._purge(
            keys=[self.sequence_key, *markers, *keys], args=[lifetime_ms, len(markers)])))

    def store(self, redis_key: str, value: bytes, ttl: int, start: Start,
              marks: Iterable[str] = ()) -> bool:
        """SET redis_key value EX ttl, unless redis_key (or a key in `marks`) was purged after
        `start`. Whether it was stored; raises what the Redis call raises."""
        if self.timer() - start.at >= self.lifetime / 2:
            log.debug("not storing %s: its fetch outlasted what the purge markers cover", redis_key)
            return False
        keys = [redis_key, self.sequence_key, marker_key(redis_key), *marks]
        return bool(self.health.call(lambda: self._store(keys=keys, args=[value, ttl, start.seq])))
