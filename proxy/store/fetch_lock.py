"""Cross-process request coalescing: a short per-entry lock in Redis (`SET NX PX`)."""

import dataclasses
import functools
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from redis import crc

from proxy.errors import StoreUnavailable
from proxy.store.connection import RedisHealth, pipelined

log = logging.getLogger(__name__)

T = TypeVar("T")

LOCK = "\x00lock"

# Delete the lock only if it is still ours: after expiry another process may hold it
# (the pattern of https://redis.io/docs/latest/commands/set/ "a simple locking pattern").
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


def hash_tag(redis_key: str) -> str | None:
    """The part of the key Redis Cluster hashes when it has one: between the first '{' and the
    first '}' after it, if not empty (https://redis.io/docs/latest/operate/oss_and_stack/
    reference/cluster-spec/#hash-tags)."""
    start = redis_key.find("{")
    end = redis_key.find("}", start + 1) if start != -1 else -1
    return redis_key[start + 1:end] if end > start + 1 else None


def key_slot(redis_key: str) -> int:
    """The Redis Cluster hash slot of a key, as redis-py encodes it (UTF-8)."""
    return crc.key_slot(redis_key.encode())


@functools.cache
def _slot_tags() -> tuple[str, ...]:
    """For each hash slot, the smallest decimal number hashing to it: built on first use
    (about 110,000 CRC16s, ~0.1 s), then one tuple of 16384 short strings."""
    tags: dict[int, str] = {}
    number = 0
    while len(tags) < crc.REDIS_CLUSTER_HASH_SLOTS:
        tags.setdefault(crc.key_slot(b"%d" % number), str(number))
        number += 1
    return tuple(tags[slot] for slot in range(crc.REDIS_CLUSTER_HASH_SLOTS))


def slot_tag(slot: int) -> str:
    """A hash tag whose key slot is `slot` (so "{" + slot_tag(s) + "}..." lands in slot s)."""
    return _slot_tags()[slot]


def co_located(redis_key: str, suffix: str) -> str:
    """The key `suffix` names beside `redis_key` (its fetch lock, its purge marker) in
    `redis_key`'s hash slot, so a cluster keeps them on one node and one script may name both.

    A key with a hash tag keeps it; a key without one is hashed whole, so it becomes the tag; a
    key holding a '}' but no tag cannot be a tag, so a tag hashing to its slot goes first.

    `suffix` starts with a NUL, which no cache key holds (control characters are refused), so
    no client key can name, read or overwrite what lives here."""
    if hash_tag(redis_key) is not None:
        return redis_key + suffix
    if "}" not in redis_key:
        return "{" + redis_key + "}" + suffix
    return "{" + slot_tag(key_slot(redis_key)) + "}" + redis_key + suffix


def lock_key(redis_key: str, scope: str = "") -> str:
    """The fetch lock of an entry (of one URL's fetch under it, when `scope` names the URL), in
    the entry's hash slot: the store's script releases it with the write (purge_marker.store)."""
    return co_located(redis_key, f"{LOCK}\x00{scope}" if scope else LOCK)


@dataclasses.dataclass
class Held:
    """A fetch lock this process took: its key and token (none: "", nothing to release), and
    whether a script has released it since (the store's, proxy.store.purge_marker)."""

    key: str
    token: str
    released: bool = False


class FetchLock:
    """One fetcher per entry across every proxy sharing a Redis; the others poll for its result.

    The lock expires after `hold` seconds (the upstream deadline) if its owner dies.
    """

    def __init__(self, client: redis.Redis, health: RedisHealth, hold: float,
                 poll_interval: float = 0.02, max_poll_interval: float = 0.1):
        self.client = client
        self.health = health
        self.hold = hold
        self.poll_interval = poll_interval
        self.max_poll_interval = max_poll_interval
        self._release = client.register_script(_RELEASE)

    def acquire(self, lock: str) -> str | None:
        """A token when this process now owns the fetch under the lock key `lock`; None when
        another one does. With Redis unreachable every process fetches for itself (a token
        of "")."""
        return self.acquire_reading(lock, [])[0]

    def acquire_reading(self, lock: str, keys: list[str]) -> tuple[str | None, list[Any]]:
        """`acquire(lock)` and a GET of each of `keys` after it, in one round trip on one Redis
        (connection.pipelined): the token, and each key's value (or the exception that stopped
        its GET; every one a StoreUnavailable when Redis is unreachable)."""
        token = secrets.token_hex(8)
        command = ("SET", lock, token, "NX", "PX", max(1, int(self.hold * 1000)))
        try:
            taken, *values = pipelined(self.client, self.health,
                                       [command, *(("GET", key) for key in keys)])
        except StoreUnavailable as exc:
            return "", [exc] * len(keys)
        if isinstance(taken, Exception):  # Redis down, or it refused the lock (OOM): fetch alone
            return "", values
        return (token if taken else None), values

    def release(self, lock: str, token: str) -> None:
        if not token:
            return
        try:
            self.health.call(lambda: self._release(keys=[lock], args=[token]))
        except (StoreUnavailable, redis.RedisError) as exc:
            log.debug("could not release the fetch lock %r: %s (it expires by itself)", lock, exc)

    def wait(self, lock: str, check: Callable[[], T | None]) -> T | None:
        """Poll `check` until it returns a result, the lock is gone, or `hold` has passed."""
        deadline = time.monotonic() + self.hold
        interval = self.poll_interval
        while time.monotonic() < deadline:
            time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
            interval = min(interval * 2, self.max_poll_interval)
            result = check()
            if result is not None:
                return result
            try:
                if not self.health.call(lambda: self.client.exists(lock)):
                    return check()  # released: the result is stored now, or was not storable
            except (StoreUnavailable, redis.RedisError):
                return None
        return None
