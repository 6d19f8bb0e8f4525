"""The process's budgets: MAX_PARALLEL slots for CPU work (`Gate`), which a thread gives back
while it waits on an upstream fetch (`off_cpu`); a bound on fetches in flight (a `Gate` too,
taken with a timeout); and a bound on reply bytes held for clients (`ByteBudget`)."""

import collections
import contextlib
import threading
from collections.abc import Callable, Iterator

# The Gate whose slot this thread holds (entered with `with gate:`), for off_cpu to give back.
_held = threading.local()


class Gate:
    """At most `slots` holders at once, the others waiting their turn in arrival order: a slot
    freed is handed straight to the longest waiter, never taken by a newcomer.

    threading.Semaphore does the same in Python around a Condition (two locks and a loop per
    pass, ~2.5 µs); here a pass through a gate with a free slot is one C lock held for a count.
    """

    __slots__ = ("slots", "_free", "_lock", "_waiters", "_away", "on_away")

    def __init__(self, slots: int):
        if slots < 1:
            raise ValueError("a gate needs at least one slot")
        self.slots = slots
        self._free = slots
        self._lock = threading.Lock()
        self._waiters: collections.deque[threading.Lock] = collections.deque()
        self._away = 0  # holders that gave their slot back meanwhile (off_cpu)
        # Called when a holder's thread starts a wait off the CPU: a front end whose threads
        # serve many connections starts another at once rather than when it notices the stall.
        self.on_away: list[Callable[[], None]] = []

    def acquire(self, timeout: float | None = None) -> bool:
        """Take a slot, waiting at most `timeout` seconds (None: as long as it takes); False
        when none came in time."""
        with self._lock:
            if self._free:
                self._free -= 1
                return True
            turn = threading.Lock()
            turn.acquire()
            self._waiters.append(turn)
        # Released by the release() that hands this waiter its slot.
        if turn.acquire(timeout=-1 if timeout is None else max(0.0, timeout)):
            return True
        with self._lock:
            try:
                self._waiters.remove(turn)
            except ValueError:
                return True  # a slot was handed over between the timeout and this lock
            return False

    def release(self) -> None:
        with self._lock:
            if self._waiters:
                self._waiters.popleft().release()  # the slot passes on without being freed
            else:
                self._free += 1

    def __enter__(self) -> None:
        self.acquire()
        _held.gate = self

    def __exit__(self, *exc: object) -> None:
        _held.gate = None
        self.release()

    @property
    def waiting(self) -> int:
        """Threads waiting for a slot."""
        return len(self._waiters)

    @property
    def in_use(self) -> int:
        """Slots held."""
        return self.slots - self._free

    @property
    def away(self) -> int:
        """Holders that gave their slot back while they wait on something else (off_cpu)."""
        return self._away


@contextlib.contextmanager
def off_cpu() -> Iterator[None]:
    """Around a wait that is not CPU work (an upstream fetch, another request's fetch): the
    MAX_PARALLEL slot this thread holds, if any, is given back meanwhile and taken again after
    (in turn, behind those already waiting), so slow origins never hold the slots that cached
    hits, RESP reads and the rest need."""
    gate = getattr(_held, "gate", None)
    if gate is None:  # a background refresh, the warm-up: no slot to give back
        yield
        return
    _held.gate = None
    with gate._lock:
        gate._away += 1
    gate.release()
    for hook in gate.on_away:
        hook()
    try:
        yield
    finally:
        with gate._lock:
            gate._away -= 1
        gate.acquire()
        _held.gate = gate


class ByteBudget:
    """At most `limit` bytes held at once by every taker together. `take` never waits: a taker
    waiting for room would hold its bytes meanwhile, which is what the bound is for."""

    __slots__ = ("limit", "held", "_lock")

    def __init__(self, limit: int):
        self.limit = limit
        self.held = 0
        self._lock = threading.Lock()

    def take(self, size: int) -> bool:
        """Count `size` bytes as held; False (nothing counted) when they would pass the limit."""
        with self._lock:
            if self.held + size > self.limit:
                return False
            self.held += size
            return True

    def give_back(self, size: int) -> None:
        with self._lock:
            self.held -= size
