"""The rate limiter's shared bucket table: one budget per client across forked processes, a
fixed size with least-recently-touched eviction, and no stall when a holder of its lock dies."""

import fcntl
import os
import threading
from collections.abc import Callable

from proxy.serving.rate_limit import MAX_TRACKED_CLIENTS, RateLimiter
from proxy.serving.shared_buckets import PROBE, SharedBuckets


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fork(work) -> Callable[[], bytes]:
    """Run `work()` (returning bytes) in a forked process, now; returns a function that waits
    for the process and returns what `work()` returned."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe, then leaves
        code = 1
        try:
            os.close(read)
            os.write(write, work())
            code = 0
        finally:
            os._exit(code)
    os.close(write)

    def result() -> bytes:
        with os.fdopen(read, "rb") as pipe:
            sent = pipe.read()
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        return sent

    return result


def in_child(work) -> bytes:
    return fork(work)()


def allowed(limiter: RateLimiter, count: int, peer: str = "192.0.2.1") -> bytes:
    return bytes(limiter.wait(peer) == 0 for _ in range(count))


def test_a_forked_process_spends_the_same_bucket():
    clock = Clock()
    limiter = RateLimiter(1, 5, clock=clock)  # made before the fork, as the workers' parent does
    assert allowed(limiter, 2) == b"\1\1"
    assert in_child(lambda: allowed(limiter, 4)) == b"\1\1\1\0"  # three left of the five
    assert limiter.wait("192.0.2.1") == 1
    clock.now += 1  # the child's clock is a copy: only the parent's has moved
    assert allowed(limiter, 2) == b"\1\0"
    assert in_child(lambda: allowed(limiter, 1, "192.0.2.2")) == b"\1"  # another client's own


def test_two_processes_at_once_spend_exactly_the_burst():
    clock = Clock()  # stands still: no token comes back during the race
    limiter = RateLimiter(1, 3000, clock=clock)
    theirs = fork(lambda: allowed(limiter, 2000))
    mine = allowed(limiter, 2000)
    assert sum(mine) + sum(theirs()) == 3000  # no update lost between the processes


def test_a_full_table_evicts_the_least_recently_touched_client():
    clock = Clock()
    limiter = RateLimiter(0.001, 1, max_clients=PROBE, clock=clock)  # every slot in every probe
    for i in range(PROBE):
        clock.now += 1
        assert limiter.wait(f"10.0.0.{i}") == 0
    assert len(limiter) == PROBE
    clock.now += 1
    assert limiter.wait("10.0.1.1") == 0  # a new client takes the slot of 10.0.0.0
    assert len(limiter) == PROBE
    assert limiter.wait("10.0.0.0") == 0  # forgotten: a full bucket again; it evicts 10.0.0.1
    assert all(limiter.wait(f"10.0.0.{i}") > 0 for i in range(2, PROBE))  # still spent


def test_a_process_that_dies_holding_the_lock_does_not_stall_the_others():
    buckets = SharedBuckets(16, 1.0, 2.0)

    def take_the_lock_and_die() -> bytes:
        fcntl.lockf(buckets._fd, fcntl.LOCK_EX)
        return b"held"  # in_child exits without unlocking

    assert in_child(take_the_lock_and_die) == b"held"
    answered: list[float] = []
    taker = threading.Thread(target=lambda: answered.append(buckets.take("192.0.2.1", 1000.0)),
                             daemon=True)
    taker.start()
    taker.join(10)
    assert answered == [2.0]


def test_a_flood_fills_the_default_table_and_a_spent_client_starts_again_full():
    clock = Clock()
    limiter = RateLimiter(1, 2, clock=clock)
    assert allowed(limiter, 3) == b"\1\1\0"
    # Distinct addresses, each more recent than the last (1 µs apart: no bucket refills), in
    # batches until the table is full: a slot is taken only by an address whose probe window
    # holds it, so how many addresses fill it varies with the salt (about 2.4 a slot, a few
    # more for the last slots).
    sent = 0
    for _batch in range(20):
        for i in range(sent, sent + 40000):
            clock.now += 1e-6
            limiter.wait(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}")
        sent += 40000
        if len(limiter) == MAX_TRACKED_CLIENTS:
            break
    assert len(limiter) == MAX_TRACKED_CLIENTS == 16384
    assert len(limiter._buckets._memory) == 384 * 1024 and PROBE == 8  # as the README says
    assert allowed(limiter, 3) == b"\1\1\0"  # forgotten by the flood: a full burst again
