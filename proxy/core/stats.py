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
STORE_ERRORS = "store_errors"
STORES_REFUSED = "stores_refused"
INVALIDATIONS = "invalidations"
PURGES = "purges"


class Stats:
    """Counts by name; `counts` is the Counter metrics and INFO read."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def count(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self.counts[name] += amount
REFRESHES_AHEAD = "refreshes_ahead"
