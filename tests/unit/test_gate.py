"""MAX_PARALLEL's gate: at most N holders, the others let in by order of arrival."""

import threading

import pytest

from proxy.budgets import Gate
from tests.servers import wait_until


def test_a_gate_of_one_lets_waiters_in_in_arrival_order():
    gate = Gate(1)
    gate.acquire()
    order: list[int] = []
    threads = []
    for i in range(6):
        def enter(i: int = i) -> None:
            with gate:
                order.append(i)
        thread = threading.Thread(target=enter)
        thread.start()
        threads.append(thread)
        wait_until(lambda i=i: gate.waiting == i + 1)  # this one queued before the next starts
    gate.release()
    for thread in threads:
        thread.join(5)
    assert order == [0, 1, 2, 3, 4, 5]


def test_a_freed_slot_goes_to_the_waiter_not_to_a_newcomer():
    gate = Gate(1)
    gate.acquire()
    entered = threading.Event()
    leave = threading.Event()

    def waiter() -> None:
        with gate:
            entered.set()
            leave.wait(5)

    thread = threading.Thread(target=waiter)
    thread.start()
    wait_until(lambda: gate.waiting == 1)
    gate.release()  # handed to the waiter: the gate is still full
    assert entered.wait(5)
    newcomer = threading.Thread(target=gate.acquire)
    newcomer.start()
    wait_until(lambda: gate.waiting == 1)  # the newcomer waits its turn
    leave.set()
    thread.join(5)
    newcomer.join(5)
    assert not newcomer.is_alive() and gate.waiting == 0


def test_a_gate_of_four_holds_four_at_once_and_queues_the_fifth():
    gate = Gate(4)
    for _ in range(4):
        gate.acquire()
    fifth = threading.Thread(target=gate.acquire)
    fifth.start()
    wait_until(lambda: gate.waiting == 1)
    gate.release()
    fifth.join(5)
    assert not fifth.is_alive() and gate.waiting == 0


def test_a_gate_needs_a_slot():
    with pytest.raises(ValueError):
        Gate(0)
