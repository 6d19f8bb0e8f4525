"""The core's counters: their names, and one thread-safe Counter the front ends read."""

import threading
from collections import Counter

HITS_L1 = "hits_l1"
HITS_REDIS = "hits_redis"
HITS_STALE = "hits_stale"
MISSES = "misses"
READS_REDIS = "reads_redis"
COALESCED_WAITS = "coalesced_waits"
UPSTREAM_FETCHES = "upstream_fetches"
UPSTREAM_ERRORS = "upstream_errors"
UPSTREAM_SECONDS = "upstream_seconds"  # time spent asking upstream, a float
STORE_ERRORS = "store_errors"
STORES_REFUSED = "stores_refused"
INVALIDATIONS = "invalidations"
PURGES = "purges"


class Stats:
    """Counts by name; `counts` is the Counter metrics and INFO read."""

    def __init__(self) -> None:
        # Whole counts, and one float (UPSTREAM_SECONDS): a Counter adds either.
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def count(self, name: str, amount: float = 1) -> None:
        with self._lock:
            self.counts[name] += amount  # type: ignore[assignment]  # Counter holds floats too
REFRESHES_AHEAD = "refreshes_ahead"
