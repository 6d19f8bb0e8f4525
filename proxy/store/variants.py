"""Vary: the further variants of one URL, beside its entry in its hash slot.

The URL's key holds the first variant stored (or the one a response without `Vary` replaced
them all with). A response selected by other request header values (RFC 9111 §4.1) is stored
under `variant_key`: the URL's key plus a digest of those values, in the same hash slot
(`co_located`), so one purge step, one store script and one cluster node serve them all. Its
key is named in the URL's variant index, a sorted set by store time (Redis's clock), which
bounds them (the least recently stored goes) and lets a purge find them.
"""

import functools
import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from proxy.store.connection import RedisHealth
from proxy.store.fetch_lock import co_located

VARIANT = "\x00variant:"
INDEX = "\x00variants"

# Record one variant; the index lives as long as the longest-lived variant it names; the
# oldest beyond `keep` are taken out and returned, for the caller to delete.
_RECORD = """
local now = redis.call('TIME')
redis.call('ZADD', KEYS[1], now[1] .. string.format('%06d', tonumber(now[2])), ARGV[1])
if redis.call('TTL', KEYS[1]) < tonumber(ARGV[2]) then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
local extra = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[3])
local gone = {}
if extra > 0 then
  local old = redis.call('ZPOPMIN', KEYS[1], extra)
  for i = 1, #old, 2 do table.insert(gone, old[i]) end
end
return gone
"""


def variant_key(redis_key: str, vary: Mapping[str, str | None]) -> str:
    """Where the variant of `redis_key`'s URL selected by these (normalised) values lives."""
    digest = hashlib.sha256(json.dumps(sorted(vary.items())).encode()).hexdigest()[:32]
    return co_located(redis_key, VARIANT + digest)


def index_key(redis_key: str) -> str:
    """The sorted set naming the further variants of `redis_key`'s URL."""
    return co_located(redis_key, INDEX)


class Variants:
    """The variant index of each URL key: record a store, list for a purge."""

    def __init__(self, client: Any, health: RedisHealth):
        self.client = client
        self.health = health
        self._record = client.register_script(_RECORD)

    def record(self, redis_key: str, variant: str, ttl: int, keep: int) -> list[str]:
        """Name `variant` (stored now for `ttl` seconds) in `redis_key`'s index, which keeps the
        `keep` most recently stored; the variant keys it let go, to be deleted. Raises what the
        Redis call raises."""
        gone = self.health.call(functools.partial(
            self._record, keys=[index_key(redis_key)], args=[variant, ttl, keep]))
        return [key.decode() if isinstance(key, bytes) else str(key) for key in gone]

    def of(self, redis_keys: Iterable[str]) -> list[str]:
        """Every variant key the indexes of `redis_keys` name. Raises what Redis raises."""
        found: list[str] = []
        for redis_key in redis_keys:
            members = self.health.call(functools.partial(
                self.client.zrange, index_key(redis_key), 0, -1))
            found.extend(key.decode() if isinstance(key, bytes) else str(key) for key in members)
        return found

    def drop_index(self, redis_keys: Iterable[str]) -> None:
        """Delete the indexes of `redis_keys` (after their variants were purged)."""
        for redis_key in redis_keys:
            self.health.call(functools.partial(self.client.delete, index_key(redis_key)))
