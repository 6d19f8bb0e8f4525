"""Socket plumbing shared by the front ends: deadline-bounded reads and client-slot limits."""

import io
import socket
import socketserver
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer


class DeadlineReader(io.RawIOBase):
    """A socket reader whose reads share one total deadline when one is set.

    The stdlib's per-read timeout alone lets a client trickle one byte at a time forever
    (slowloris); setting `deadline` bounds the whole of a request's headers.
    """

    def __init__(self, sock: socket.socket, idle_timeout: float):
        self.sock = sock
        self.idle_timeout = idle_timeout
        self.deadline: float | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: "WriteableBuffer") -> int:
        if self.deadline is None:
            self.sock.settimeout(self.idle_timeout)
        else:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("request headers not received in time")
            self.sock.settimeout(remaining)
        return self.sock.recv_into(buffer)


def adopt_listener(server: socketserver.TCPServer, sock: socket.socket) -> None:
    """Make `server` accept on `sock`, bound and listening already (pre-forked workers all
    accept on the parent's socket; the kernel gives each connection to one of them)."""
    server.socket.close()
    # Every worker wakes for a new connection and one wins it: the others' accept must fail
    # at once (BlockingIOError, which socketserver ignores) rather than block the serve loop.
    sock.setblocking(False)
    server.socket = sock
    server.server_address = sock.getsockname()
    if hasattr(server, "server_port"):
        server.server_port = server.server_address[1]


class LimitedServerMixIn:
    """At most `max_clients` connections at once (the next one gets `reject_bytes` and is closed
    at once, never queued), and at most `max_parallel` requests processed at once."""

    max_clients = 1024
    reject_bytes = b""

    def init_limits(self, max_clients: int, max_parallel: int,
                    parallel: threading.Semaphore | None = None) -> None:
        """`parallel`: a semaphore shared with other front ends (MAX_PARALLEL is per process);
        else one of `max_parallel` slots for this server alone."""
        self.max_clients = max_clients
        self.client_slots = threading.BoundedSemaphore(max_clients)
        # threading.Semaphore wakes waiters in arrival order, so MAX_PARALLEL=1 is FIFO.
        self.parallel = parallel or threading.Semaphore(max_parallel)
        self.active_connections = 0
        self.rejected_connections = 0
        self._count_lock = threading.Lock()

    def process_request(self, request, client_address):  # type: ignore[no-untyped-def]
        if not self.client_slots.acquire(blocking=False):
            with self._count_lock:
                self.rejected_connections += 1
            self._reject(request)
            return
        with self._count_lock:
            self.active_connections += 1
        try:
            super().process_request(request, client_address)  # type: ignore[misc]
        except BaseException:
            self._release()
            raise

    def process_request_thread(self, request, client_address):  # type: ignore[no-untyped-def]
        try:
            super().process_request_thread(request, client_address)  # type: ignore[misc]
        finally:
            self._release()

    def _release(self) -> None:
        with self._count_lock:
            self.active_connections -= 1
        self.client_slots.release()

    def _reject(self, request: socket.socket) -> None:
        try:
            request.settimeout(0.2)
            request.sendall(self.reject_bytes)
        except OSError:
            pass
        finally:
            self.shutdown_request(request)  # type: ignore[attr-defined]


class ThreadingLimitedServer(LimitedServerMixIn, socketserver.ThreadingTCPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 1024  # the default 5 overflows under 64 connections (CONTRACT §8)
