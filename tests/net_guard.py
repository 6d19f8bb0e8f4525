"""Test harness for the upstream policy: a fake DNS, and a guard that keeps traffic on loopback.

The guard is a process-wide audit hook (PEP 578) switched on only while a policy test runs.
CPython raises the `socket.connect`, `socket.sendto` and `socket.getaddrinfo` audit events
before the system call, so a connect to anything but 127.0.0.0/8 or ::1, or a name lookup that
could leave the machine, fails loudly and never happens, even when the policy under test is
broken. Every attempt is also recorded, for the fixture to fail the test at teardown (an
exception raised inside the proxy would otherwise surface only as a 5xx).
"""

import ipaddress
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest

LOOPBACK_V4 = ipaddress.ip_network("127.0.0.0/8")
LOOPBACK_V6 = ipaddress.ip_address("::1")


class OffLoopback(AssertionError):
    """A test tried to reach beyond loopback (or to resolve a name through the system)."""


def is_loopback_literal(host: Any) -> bool:
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not isinstance(host, str):
        return False
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return ip == LOOPBACK_V6 or (ip.version == 4 and ip in LOOPBACK_V4)


class NetworkGuard:
    def __init__(self) -> None:
        self.active = False
        self.violations: list[str] = []
        self._lock = threading.Lock()

    def hook(self, event: str, args: tuple[Any, ...]) -> None:
        if not self.active:
            return
        problem = None
        if event in ("socket.connect", "socket.sendto"):
            sock, address = args[0], args[-1]
            if sock.family in (socket.AF_INET, socket.AF_INET6) and \
                    not is_loopback_literal(address[0]):
                problem = f"{event} to {address!r}"
        elif event == "socket.getaddrinfo":
            host = args[0]
            if host is not None and not is_loopback_literal(host):
                problem = f"system name lookup of {host!r}"
        elif event in ("socket.gethostbyname", "socket.gethostbyname_ex", "socket.gethostbyaddr"):
            if not is_loopback_literal(args[0]):
                problem = f"{event} of {args[0]!r}"
        if problem is not None:
            with self._lock:
                self.violations.append(problem)
            raise OffLoopback(f"test traffic must stay on loopback: {problem}")


_guard: NetworkGuard | None = None
_install_lock = threading.Lock()


def network_guard() -> NetworkGuard:
    """The process's guard, installed on first use (audit hooks cannot be removed)."""
    global _guard
    with _install_lock:
        if _guard is None:
            _guard = NetworkGuard()
            sys.addaudithook(_guard.hook)
        return _guard


@pytest.fixture
def loopback_only():
    """Import into a test module (autouse there): the guard is on for each of its tests."""
    guard = network_guard()
    guard.violations.clear()
    guard.active = True
    yield guard
    guard.active = False
    assert guard.violations == [], "a test tried to leave loopback"


class FakeDNS:
    """A resolver for the policy: names map to address lists, or to a callable that answers
    (for rebinding). Unknown names fail like NXDOMAIN. Records every question."""

    def __init__(self, names: dict[str, list[str] | Callable[[], list[str]]] | None = None):
        self.names = dict(names or {})
        self.asked: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, host: str, port: int) -> list[str]:
        with self._lock:
            self.asked.append(host)
        answer = self.names.get(host.rstrip("."))
        if answer is None:
            raise socket.gaierror(socket.EAI_NONAME, f"{host} not known to the fake DNS")
        return list(answer() if callable(answer) else answer)


def rebinding(first: list[str], then: list[str]) -> Callable[[], list[str]]:
    """An answer that is `first` on the first question and `then` on every later one."""
    calls = [0]
    lock = threading.Lock()

    def answer() -> list[str]:
        with lock:
            calls[0] += 1
            return first if calls[0] == 1 else then

    return answer
