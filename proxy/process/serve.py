"""The serving process: the serve loop with a clean stop on SIGINT or SIGTERM, and the
warnings for a port exposed with no tokens. It knows no front end: the wiring passes callables."""

import ipaddress
import logging
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Protocol

import redis

from proxy.errors import LauncherError, ListenError

log = logging.getLogger(__name__)

STOP_CHECK = 0.25  # seconds: the longest a stop signal waits to be acted on


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host.lower() in ("localhost", "localhost.")


def warn_if_exposed(host: str, auth_enabled: bool) -> bool:
    """Log a loud warning when the HTTP port is reachable beyond this machine with no tokens
    (an open proxy that fetches URLs for anyone); True when it warned."""
    if _is_loopback(host) or auth_enabled:
        return False
    log.warning("HTTP_HOST=%s exposes the proxy beyond this machine with no AUTH_TOKENS: "
                "anyone who reaches it can make it fetch URLs and read cached entries; set "
                "AUTH_TOKENS or AUTH_TOKENS_FILE, or HTTP_HOST=127.0.0.1", host)
    return True


def warn_if_resp_exposed(host: str, port: int, auth_enabled: bool) -> bool:
    """The same for the RESP port: with tokens, clients must AUTH first; True when it warned."""
    if _is_loopback(host) or auth_enabled:
        return False
    log.warning("RESP_PORT=%d on %s with no AUTH_TOKENS: anyone who reaches it can read every "
                "key of the backing Redis; set AUTH_TOKENS (clients then AUTH with a token) or "
                "RESP_PORT=0 to turn it off", port, host)
    return True


class Server(Protocol):
    """What the loop stops: a socketserver-style front end, started already."""

    def drain(self) -> None: ...

    def drained(self, timeout: float) -> bool: ...

    def shutdown(self) -> None: ...

    def server_close(self) -> None: ...


def serve(start: Callable[[], list[Server]], close: Callable[[], None],
          ready: Callable[[], None] | None = None, drain: float = 0.0) -> int:
    """One serving process: `start()` binds and starts the front ends, which serve until SIGINT
    or SIGTERM; then they drain (accept no more, answer what is under way, each connection's
    next answer its last) for at most `drain` seconds, are shut down, and `close()` releases
    the rest (the proxy). `ready` is called once they serve (a reload waits for it before
    stopping the worker this one replaces)."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    servers: list[Server] = []
    try:
        servers = start()
        if ready is not None:
            ready()
        # Woken often: a signal the kernel hands to another thread does not interrupt this wait,
        # and CPython runs its handler only once the main thread runs again (a worker slept on
        # through its SIGTERM for up to the whole wait: stop() and reloads hung).
        while not stop.wait(STOP_CHECK):
            pass
    except (LauncherError, ListenError, OSError, ValueError, redis.RedisError) as exc:
        # Messages only: redis-py's name the host and port, never the password; a traceback
        # could show a source line holding the URL.
        log.error("cannot start: %s", exc)
        return 1
    finally:
        for server in servers:
            server.drain()  # all at once: one bound for the whole process
        if servers:
            log.info("draining: no new connections; each open one closes after its next answer "
                     "(at most %g s)", drain)
        deadline = time.monotonic() + drain
        if not all([server.drained(max(0.0, deadline - time.monotonic())) for server in servers]):
            log.info("connections still open after the %g s drain are closed", drain)
        for server in servers:
            server.shutdown()
            server.server_close()
        close()
    log.info("stopped")
    return 0
