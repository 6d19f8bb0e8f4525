"""The core's counters: their names, and the thread-safe Counter the front ends read."""

import itertools
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
    """Counts by name; `counts` is the Counter metrics and INFO read.

    A count of one (every hit, every read) takes no lock: each name has an itertools.count,
    whose next() is one C call that the GIL does not interrupt, so no count is lost; its total
    is read back from the count's repr. Other amounts (a float, a batch) go under the lock."""

    def __init__(self) -> None:
        # Whole counts, and one float (UPSTREAM_SECONDS): a Counter adds either.
        self._amounts: Counter[str] = Counter()
        self._tallies: dict[str, itertools.count[int]] = {}
        self._lock = threading.Lock()

    def count(self, name: str, amount: float = 1) -> None:
        if amount == 1 and type(amount) is int:
            tally = self._tallies.get(name)
            if tally is None:
                with self._lock:
                    tally = self._tallies.setdefault(name, itertools.count())
            next(tally)
            return
        with self._lock:
            self._amounts[name] += amount  # type: ignore[assignment]  # Counter holds floats too

    @property
    def counts(self) -> Counter[str]:
        """The totals now, by name (a copy)."""
        with self._lock:
            totals = Counter(self._amounts)
            tallies = list(self._tallies.items())
        for name, tally in tallies:
            totals[name] += _taken(tally)
        return totals


def _taken(tally: "itertools.count[int]") -> int:
    """How many numbers a count started at 0 has handed out: its repr is `count(<next>)`."""
    return int(repr(tally)[6:-1])


REFRESHES_AHEAD = "refreshes_ahead"
