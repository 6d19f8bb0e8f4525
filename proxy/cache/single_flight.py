"""Single flight: concurrent calls for one key share one execution and its result."""

import contextlib
import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from contextlib import AbstractContextManager
from typing import Any, TypeVar

T = TypeVar("T")


class SingleFlight:
    """`do(key, fn)` runs `fn` once per key at a time; callers arriving meanwhile wait for it.

    The call runs outside the lock (locks guard memory, never I/O); a failure reaches every
    waiter. `wait_timeout` bounds how long a waiter waits before it calls `fn` itself;
    `waiting()` is entered around that wait (proxy.budgets.off_cpu: a waiter is not working).
    """

    def __init__(self, waiting: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext) -> None:
        self._waiting = waiting
        self._lock = threading.Lock()
        self._calls: dict[Hashable, Future[Any]] = {}

    def do(self, key: Hashable, fn: Callable[[], T], wait_timeout: float | None = None) -> tuple[T, bool]:
        """Return (result, shared): shared is True when another caller's execution answered."""
        with self._lock:
            call = self._calls.get(key)
            leader = call is None
            if leader:
                call = self._calls[key] = Future()
        assert call is not None
        if not leader:
            try:
                with self._waiting():
                    result = call.result(wait_timeout)
                return result, True
            except TimeoutError:
                return fn(), False
        try:
            result = fn()
        except BaseException as exc:
            call.set_exception(exc)
            raise
        else:
            call.set_result(result)
            return result, False
        finally:
            with self._lock:
                del self._calls[key]
