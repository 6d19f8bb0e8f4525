"""L1: an in-process LRU cache with per-entry expiry, a byte bound and single-flight loads.

The structure is cachetools' TLRUCache algorithm (an OrderedDict in LRU order, and a heap of
expiry times whose entries are marked removed rather than dug out), held here in a few lines
rather than used through TLRUCache: its `__getitem__` is pure Python behind three layers
(TLRUCache, Cache, the timer wrapper), and an L1 hit, the proxy's hottest path, paid about
1.5 us for it against about 0.4 us for the dict lookup, expiry check and move_to_end below.
"""

import heapq
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

from proxy.cache.single_flight import SingleFlight

MISSING: Any = object()
# L1 keys are (tier, key): the two roles share one L1 and never each other's entries.
URL_TIER = "u"  # (URL_TIER, redis key of a URL-cache entry) -> Entry
READ_TIER = "g"  # (READ_TIER, raw key of the backing Redis) -> its value
# How many recently invalidated keys are remembered one by one; a fill that began before the
# oldest forgotten one is not kept (it might have been for that key).
RECENT_INVALIDATIONS = 4096


class _Slot:
    """One held value: when it expires, its size in bytes, whether it has left the cache (its
    heap entry then stays until popped), and what its readers derived from it (`memo`)."""

    __slots__ = ("value", "expires", "size", "removed", "memo")

    def __init__(self, value: Any, expires: float, size: int):
        self.value = value
        self.expires = expires
        self.size = size
        self.removed = False
        self.memo: dict[Hashable, Any] | None = None


def _size_of(value: Any) -> int:
    body = getattr(value, "body", value)
    return len(body) if isinstance(body, (bytes, bytearray)) else 64


class LocalCache:
    """LRU over `capacity` keys and `max_bytes` of values; each entry expires `ttl` seconds after
    it was added, or sooner when stored with a shorter ttl. The clock is injected for tests.

    `capacity=0` disables it: every get misses and nothing is kept.
    """

    def __init__(self, capacity: int = 1024, max_bytes: int = 64 * 1024**2, ttl: float = 3600.0,
                 timer: Callable[[], float] = time.monotonic):
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.ttl = ttl
        self.timer = timer
        # Least recently used first; and a heap of (expires, sequence, key, slot) for expiry.
        self._data: OrderedDict[Hashable, _Slot] = OrderedDict()
        self._order: list[tuple[float, int, Hashable, _Slot]] = []
        self._sequence = 0  # orders heap entries of equal expiry without comparing keys
        self._bytes = 0
        self._lock = threading.Lock()
        # Per-key generations: a tick per invalidation, the tick at which each recently invalidated
        # key was last invalidated, and a floor below which every fill is refused (set by a flush,
        # and by forgetting a key from the bounded map). A fill that began at tick t is kept unless
        # its own key (or everything) was invalidated after t.
        self._tick = 0
        self._floor = 0
        self._invalidated: OrderedDict[Hashable, int] = OrderedDict()
        self._admitting = True  # False while invalidations may be missed: serve, but keep nothing new
        self._flights = SingleFlight()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        with self._lock:
            self._expire()
            return len(self._data)

    @property
    def bytes(self) -> int:
        with self._lock:
            self._expire()
            return self._bytes

    def get(self, key: Hashable) -> Any:
        """The value, or MISSING."""
        with self._lock:
            slot = self._data.get(key)
            if slot is None or not self.timer() < slot.expires:
                self.misses += 1
                return MISSING
            self._data.move_to_end(key)
            self.hits += 1
            return slot.value

    def get_with_memo(self, key: Hashable) -> tuple[Any, dict[Hashable, Any]]:
        """The value (or MISSING) and a dict held beside it, for what a reader derives from the
        value alone (the URL role keeps an entry's serialized reply head there): it lives and
        dies with this value, so a replaced or invalidated value never shows an old memo."""
        with self._lock:
            slot = self._data.get(key)
            if slot is None or not self.timer() < slot.expires:
                self.misses += 1
                return MISSING, {}
            self._data.move_to_end(key)
            self.hits += 1
            if slot.memo is None:
                slot.memo = {}
            return slot.value, slot.memo

    @property
    def epoch(self) -> int:
        """Take it before reading a value from Redis; pass it to `set` to keep the value only if
        no invalidation of that key (and no flush) arrived in between."""
        return self._tick

    def set(self, key: Hashable, value: Any, ttl: float | None = None, *,
            epoch: int | None = None) -> None:
        if self.capacity == 0:
            return
        ttl = self.ttl if ttl is None else min(ttl, self.ttl)
        size = _size_of(value)
        if ttl <= 0 or size > self.max_bytes:
            self.pop(key)
            return
        with self._lock:
            if self._admitting and (epoch is None or self._unchanged_since(key, epoch)):
                self._store(key, value, ttl, size)

    def suspend(self) -> None:
        """Keep serving what is held, but take nothing new (invalidations may be missed)."""
        with self._lock:
            self._invalidate_all()
            self._admitting = False

    def resume(self) -> None:
        with self._lock:
            self._invalidate_all()  # a load that began while suspended is not kept
            self._admitting = True

    def _unchanged_since(self, key: Hashable, epoch: int) -> bool:
        return epoch >= self._floor and self._invalidated.get(key, 0) <= epoch

    def _invalidate_key(self, key: Hashable) -> None:
        self._tick += 1
        self._invalidated[key] = self._tick
        self._invalidated.move_to_end(key)
        if len(self._invalidated) > RECENT_INVALIDATIONS:
            _old_key, tick = self._invalidated.popitem(last=False)
            self._floor = max(self._floor, tick)

    def _invalidate_all(self) -> None:
        self._tick += 1
        self._floor = self._tick
        self._invalidated.clear()

    def _store(self, key: Hashable, value: Any, ttl: float, size: int) -> None:
        self._discard(key)
        self._expire()
        while self._data and (len(self._data) >= self.capacity
                              or self._bytes + size > self.max_bytes):
            _old_key, old = self._data.popitem(last=False)  # the least recently used
            old.removed = True
            self._bytes -= old.size
        expires = self.timer() + ttl
        self._data[key] = slot = _Slot(value, expires, size)
        self._bytes += size
        self._sequence += 1
        heapq.heappush(self._order, (expires, self._sequence, key, slot))

    def pop(self, key: Hashable) -> None:
        with self._lock:
            self._invalidate_key(key)
            self._discard(key)

    def clear(self) -> None:
        with self._lock:
            self._invalidate_all()
            self._data.clear()
            self._order.clear()
            self._bytes = 0

    def drop_where(self, doomed: Callable[[Hashable], bool]) -> int:
        """Drop every entry whose key `doomed` picks (a cluster node's keys, when its
        invalidations may be lost), and refuse the fills in flight; how many went."""
        with self._lock:
            self._invalidate_all()
            keys = [key for key in self._data if doomed(key)]
            for key in keys:
                self._discard(key)
            return len(keys)

    def get_or_load(self, key: Hashable, load: Callable[[], tuple[Any, float | None]]) -> Any:
        """The cached value, else `load()` run once for all concurrent callers. `load` returns the
        value and how long it may be kept (None: the cache's TTL); the value is cached unless it
        is None or an invalidation of `key` arrived during the load."""
        value = self.get(key)
        if value is not MISSING:
            return value

        def leader() -> Any:
            epoch = self.epoch
            loaded, ttl = load()
            if loaded is not None:
                self.set(key, loaded, ttl, epoch=epoch)
            return loaded

        return self._flights.do(key, leader)[0]

    def _discard(self, key: Hashable) -> None:
        slot = self._data.pop(key, None)
        if slot is not None:
            slot.removed = True
            self._bytes -= slot.size

    def _expire(self) -> None:
        """Drop the expired entries, and the heap's entries of those gone before."""
        order, now = self._order, self.timer()
        if len(order) > 2 * len(self._data):  # mostly removed ones: rebuild (as TLRUCache)
            self._order = order = [entry for entry in order if not entry[3].removed]
            heapq.heapify(order)
        while order and (order[0][3].removed or not now < order[0][0]):
            _expires, _sequence, key, slot = heapq.heappop(order)
            if not slot.removed:
                del self._data[key]
                slot.removed = True
                self._bytes -= slot.size
