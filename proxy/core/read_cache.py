"""The read role: keys of the backing Redis through L1 (`/get/<key>`, RESP GET/MGET/EXISTS)."""

from collections.abc import Callable, Sequence
from typing import Any

import redis
from redis import crc

from proxy.cache.local_cache import MISSING, READ_TIER, LocalCache
from proxy.cache.result import HIT, MISS
from proxy.core import stats as names
from proxy.core.stats import Stats
from proxy.errors import BadRequest, Forbidden, ServiceUnavailable
from proxy.store.connection import RedisHealth
from proxy.store.connection import get as store_get

Key = bytes | str


class ReadCache:
    """GET, MGET and EXISTS of backing-Redis keys, L1 first, each value kept in L1 no longer
    than its key lives in Redis."""

    def __init__(self, client: Any, local: LocalCache, health: RedisHealth, stats: Stats, *,
                 prefix: str = "rp:", allow_cache_prefix: bool = False,
                 tracked: Callable[[], bool] = lambda: False):
        self.client = client
        self.local = local
        self.health = health
        self.stats = stats
        self.prefix = prefix
        self.allow_cache_prefix = allow_cache_prefix
        self.tracked = tracked  # whether Redis now tells this process of every change it read
        # How get_value loads a key L1 misses: replaceable, so a test can hold loads in flight.
        self.load_value: Callable[[bytes], tuple[bytes | None, float | None]] = self._redis_value

    def get_value(self, key: Key) -> bytes | None:
        """The value of a backing-Redis key through L1; None when it does not exist."""
        return self.read_value(key)[0]

    def read_value(self, key: Key) -> tuple[bytes | None, str]:
        """The value of a backing-Redis key through L1, and where it came from: HIT (L1) or
        MISS (read from Redis)."""
        raw_key = key.encode() if isinstance(key, str) else key
        self._check_readable((raw_key,))
        cached = self.local.get((READ_TIER, raw_key))
        if cached is not MISSING:
            self.stats.count(names.HITS_L1)
            hit: bytes | None = cached
            return hit, HIT
        value: bytes | None = self.local.get_or_load((READ_TIER, raw_key),
                                                     lambda: self.load_value(raw_key))
        return value, MISS

    def get_values(self, keys: list[Key]) -> list[bytes | None]:
        """MGET through L1: hits from memory, the misses in one Redis round trip."""
        raw_keys = [k.encode() if isinstance(k, str) else k for k in keys]
        self._check_readable(raw_keys)
        values: list[bytes | None] = []
        missing: list[int] = []
        for i, key in enumerate(raw_keys):
            cached = self.local.get((READ_TIER, key))
            values.append(None if cached is MISSING else cached)
            if cached is MISSING:
                missing.append(i)
            else:
                self.stats.count(names.HITS_L1)
        if missing:
            self.stats.count(names.READS_REDIS, len(missing))
            epoch = self.local.epoch
            fetched, pttls = self._mget_with_pttls([raw_keys[i] for i in missing])
            for i, value, pttl in zip(missing, fetched, pttls, strict=True):
                values[i] = value
                if value is not None:
                    self.local.set((READ_TIER, raw_keys[i]), value, l1_ttl(pttl), epoch=epoch)
        return values

    def _mget_with_pttls(self, wanted: list[bytes]) -> tuple[list[bytes | None], list[int]]:
        """The values of `wanted` and their PTTLs in one round trip. One MGET per hash slot: a
        cluster pipeline refuses an MGET across slots, and sends each slot's to its node; with
        one Redis they share the round trip all the same."""
        groups: dict[int, list[bytes]] = {}
        for key in dict.fromkeys(wanted):
            groups.setdefault(crc.key_slot(key), []).append(key)

        def read(pipe: Any) -> int:
            for group in groups.values():
                pipe.execute_command("MGET", *group)
            return len(groups)

        replies, pttls = self._read_with_pttls(read, wanted)
        found = {key: value for group, values in zip(groups.values(), replies, strict=True)
                 for key, value in zip(group, values, strict=True)}
        return [found[key] for key in wanted], pttls

    def exists(self, keys: list[Key]) -> int:
        """EXISTS: how many of `keys` exist in the backing Redis (L1 hits count without a trip)."""
        raw_keys = [k.encode() if isinstance(k, str) else k for k in keys]
        self._check_readable(raw_keys)
        unknown = [k for k in raw_keys if self.local.get((READ_TIER, k)) is MISSING]
        found = len(raw_keys) - len(unknown)
        if unknown:
            found += int(redis_call(self.health, lambda: self.client.exists(*unknown)))
        return found

    def _check_readable(self, keys: Sequence[bytes]) -> None:
        """The read-proxy role does not read the URL cache's keys (its entries and their lock
        keys) unless GET_ALLOW_CACHE_PREFIX: there no upstream policy would be applied to them.
        One such key refuses the whole command, as a Redis ACL key pattern does."""
        if self.allow_cache_prefix:
            return
        prefix = self.prefix.encode()
        for key in keys:
            if key.startswith(prefix):
                raise Forbidden(
                    f"keys under {self.prefix!r} (CACHE_PREFIX) hold the URL cache's entries and "
                    f"are not read here: read an entry with /?key=<name without {self.prefix!r}>, "
                    "which applies the upstream policy (GET_ALLOW_CACHE_PREFIX=true lifts this)",
                    error="key refused")

    def _redis_value(self, key: bytes) -> tuple[bytes | None, float | None]:
        """The value and how long L1 may keep it: never past the key's own expiry in Redis."""
        self.stats.count(names.READS_REDIS)
        if not self._l1_needs_pttl():
            return redis_call(self.health, lambda: store_get(self.client, key)), None

        def read(pipe: Any) -> int:
            pipe.get(key)
            return 1

        (value,), (pttl,) = self._read_with_pttls(read, [key])
        return value, l1_ttl(pttl)

    def _l1_needs_pttl(self) -> bool:
        """Whether an L1 copy must be capped by its key's PTTL (read beside the value, at a cost
        of about a third more CPU a read): not with L1 off, nor while Redis tracks this
        process's reads, when the key's expiry arrives as an invalidation like any change."""
        return self.local.capacity > 0 and not self.tracked()

    def _read_with_pttls(self, read: Callable[[Any], int],
                         keys: list[bytes]) -> tuple[list[Any], list[int]]:
        """The replies of the commands `read(pipeline)` queues (it returns how many) and the PTTL
        of each key, in one round trip (-1, L1's own TTL, when no cap is needed). A plain pipeline,
        not MULTI: Redis does not track reads inside MULTI for L1 invalidation. A write landing
        between the replies is told to L1 by tracking; with L1_INVALIDATION=ttl it is the stale
        window that mode has anyway."""
        capped = self._l1_needs_pttl()

        def call() -> tuple[list[Any], list[int]]:
            pipe = self.client.pipeline(transaction=False)
            queued = read(pipe)
            for key in keys if capped else ():
                pipe.pttl(key)
            replies = pipe.execute(raise_on_error=False)
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply  # as the command gave it (WRONGTYPE ...), not annotated
            return replies[:queued], replies[queued:] if capped else [-1] * len(keys)

        result: tuple[list[Any], list[int]] = redis_call(self.health, call)
        return result


def redis_call(health: RedisHealth, fn: Callable[[], Any]) -> Any:
    """`fn()` through the health check, Redis's refusals said as the proxy's errors."""
    try:
        return health.call(fn)
    except redis.ResponseError as exc:
        if str(exc).startswith("WRONGTYPE"):
            raise BadRequest(f"redis refused the read: {exc}", error="wrong type") from exc
        raise ServiceUnavailable(f"redis refused the command: {exc}",
                                 error="redis refused") from exc


def l1_ttl(pttl: int) -> float | None:
    """L1 life of a value whose key has `pttl` ms left in Redis: -1 (no expiry) is L1's own TTL,
    -2 (gone since the read) is none."""
    if pttl == -1:
        return None
    return max(0, pttl) / 1000
