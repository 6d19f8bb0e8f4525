"""The budgets: MAX_PARALLEL's gate (at most N holders, the others let in by order of arrival;
a holder waiting on upstream gives its slot back), the same gate taken with a timeout
(MAX_FETCHES), and the byte budget of RESP replies held."""

import threading

import pytest

from proxy.budgets import ByteBudget, Gate, off_cpu
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


def test_a_timed_acquire_of_a_full_gate_gives_up_and_leaves_no_waiter():
    gate = Gate(1)
    assert gate.acquire(timeout=0.0)
    assert not gate.acquire(timeout=0.05)
    assert gate.waiting == 0 and gate.in_use == 1
    gate.release()
    assert gate.acquire(timeout=0.0)  # the slot given back is free, not handed to a ghost


def test_a_timed_acquire_gets_a_slot_freed_while_it_waits():
    gate = Gate(1)
    gate.acquire()
    got: list[bool] = []
    thread = threading.Thread(target=lambda: got.append(gate.acquire(timeout=30)))
    thread.start()
    wait_until(lambda: gate.waiting == 1)
    gate.release()
    thread.join(5)
    assert got == [True] and gate.in_use == 1


def test_off_cpu_gives_the_slot_back_and_takes_it_again_after():
    gate = Gate(1)
    inside = threading.Event()
    leave = threading.Event()
    order: list[str] = []

    def slow_fetch() -> None:
        with gate:
            with off_cpu():
                inside.set()
                leave.wait(5)
            order.append("fetch resumed")

    fetching = threading.Thread(target=slow_fetch)
    fetching.start()
    assert inside.wait(5)
    assert gate.away == 1 and gate.in_use == 0
    with gate:  # another request gets the slot while the fetch waits
        order.append("hit")
        leave.set()
        wait_until(lambda: gate.waiting == 1)  # the fetch waits its turn to resume
        assert gate.away == 0
    fetching.join(5)
    assert order == ["hit", "fetch resumed"]
    assert gate.in_use == 0 and gate.away == 0


def test_off_cpu_outside_a_gate_changes_nothing():
    gate = Gate(1)
    with off_cpu():
        assert gate.acquire(timeout=0.0)
    gate.release()
    with gate:
        pass
    with off_cpu():  # the gate was left: nothing to give back
        assert gate.in_use == 0 and gate.away == 0


def test_a_byte_budget_takes_up_to_its_limit_and_refuses_one_byte_more():
    budget = ByteBudget(100)
    assert budget.take(60) and budget.take(40)
    assert not budget.take(1)
    assert budget.held == 100  # a refusal counts nothing
    budget.give_back(40)
    assert not budget.take(41)
    assert budget.take(40) and budget.held == 100
