"""The front ends' connections (the gthread model, as gunicorn's `gthread` worker): every
connection waiting for a request sits in one epoll set that one thread watches; only a
connection with a request ready is handed to a small pool of worker threads, which serves
what is ready on it and gives it back. A thread per connection, each blocked in recv, had 64
threads fighting for the GIL under 64 busy connections (a convoy: p99 of 126-194 ms).

The epoll set is the stdlib's `select.epoll` rather than `selectors`, for EPOLLONESHOT: a
connection is disarmed when it fires, so the worker that served it re-arms it itself (one
epoll_ctl) instead of waking the loop to do so.
"""

import logging
import queue
import select
import socket
import threading
import time
from typing import Any, Protocol

from proxy.serving.sockets import Gate

log = logging.getLogger(__name__)
Socket = socket.socket  # a name the mixin's `socket` attribute does not hide

_ARMED = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLONESHOT
TICK = 0.05  # seconds between the loop's checks of deadlines and of a stalled pool
RECEIVE_SIZE = 64 * 1024
ACCEPTS_PER_WAKE = 64  # then the ready connections have their turn
THREADS = 4  # the pool's steady size: enough to keep the cores busy, few enough not to convoy
STALLED = 0.05  # every thread busy and work waiting this long: one more thread (a slow fetch)
SPARE_IDLE = 10.0  # a thread beyond THREADS ends after this long without work


class Connection(Protocol):
    """What the loop asks of a connection (the front end's request handler)."""

    request: socket.socket
    client_address: Any
    deadline: float  # time.monotonic() at which the loop closes it while it waits

    def received(self, data: memoryview) -> bool:
        """In the loop's thread: bytes that arrived; True when a request is ready to serve."""

    def serve(self) -> bool:
        """In a worker thread: serve what is ready; True to wait in the loop for more."""

    def close(self) -> None:
        """Release what the connection holds but its socket, which the loop closes."""


class _Pool:
    """Worker threads taking connections from one queue: THREADS of them, and one more for each
    STALLED interval in which all were busy with work waiting (a thread held by a slow fetch or
    a slow client must not hold up the ready requests behind it)."""

    def __init__(self, work: Any, threads: int, most: int, name: str):
        self._work = work
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self.steady, self.most, self._name = threads, max(threads, most), name
        self.threads = self.busy = 0
        self._stalled_since = 0.0

    def submit(self, job: Any) -> None:
        self._jobs.put(job)
        if self.threads < self.steady:
            self._spawn()

    def check(self, now: float) -> None:
        """From the loop, each TICK: a thread more when the pool has been stalled STALLED."""
        if self.busy < self.threads or self._jobs.empty() or self.threads >= self.most:
            self._stalled_since = 0.0
        elif not self._stalled_since:
            self._stalled_since = now
        elif now - self._stalled_since >= STALLED:
            self._stalled_since = now
            self._spawn()

    def stop(self) -> None:
        """Each thread ends once the work queued before is done."""
        for _ in range(self.threads):
            self._jobs.put(None)

    def _spawn(self) -> None:
        with self._lock:
            self.threads += 1
            number = self.threads
        threading.Thread(target=self._run, args=(number > self.steady,),
                         name=f"{self._name}-{number}", daemon=True).start()

    def _run(self, spare: bool) -> None:
        get, lock, work = self._jobs.get, self._lock, self._work
        while True:
            try:
                job = get(timeout=SPARE_IDLE) if spare else get()
            except queue.Empty:
                with lock:
                    self.threads -= 1
                return
            if job is None:  # stop()
                with lock:
                    self.threads -= 1
                return
            with lock:
                self.busy += 1
            work(job)
            with lock:
                self.busy -= 1


class LoopServerMixIn:
    """A socketserver.TCPServer's serve_forever and shutdown, with the connections in the loop
    (RequestHandlerClass builds a Connection from a socket), at most `max_clients` of them at
    once (the next gets `reject_bytes` and is closed at once, never queued) and at most
    `max_parallel` requests processed at once (the `parallel` gate)."""

    max_clients = 1024
    reject_bytes = b""
    socket: Socket
    RequestHandlerClass: Any

    def init_limits(self, max_clients: int, max_parallel: int, parallel: Gate | None = None,
                    threads: int = THREADS) -> None:
        """`parallel`: a gate shared with other front ends (MAX_PARALLEL is per process);
        else one of `max_parallel` slots for this server alone."""
        self.max_clients = max_clients
        self.parallel = parallel or Gate(max_parallel)
        self.active_connections = 0
        self.rejected_connections = 0
        self._count_lock = threading.Lock()
        self._pool = _Pool(self._serve, threads, max_clients, type(self).__name__)
        self._waiting: dict[int, Connection] = {}  # armed in the epoll set, by file number
        self._epoll: select.epoll | None = None
        self._running = False  # connections are served and kept
        self._stop_asked = False
        self._stopped = threading.Event()
        self._stopped.set()

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        self._stopped.clear()
        self._epoll = epoll = select.epoll()
        listener = self.socket
        listener.setblocking(False)  # shared by pre-forked workers: another may win the accept
        epoll.register(listener.fileno(), select.EPOLLIN)
        buffer = bytearray(RECEIVE_SIZE)
        view = memoryview(buffer)
        self._running = True
        try:
            while not self._stop_asked:
                for fd, _ in epoll.poll(min(TICK, poll_interval)):
                    if fd == listener.fileno():
                        self._accept()
                    else:
                        connection = self._waiting.pop(fd, None)
                        if connection is not None:
                            self._receive(connection, view)
                now = time.monotonic()
                for fd, connection in list(self._waiting.items()):
                    if connection.deadline <= now and self._waiting.pop(fd, None) is not None:
                        self._close(connection)  # idle too long, or a head too slow (slowloris)
                self._pool.check(now)
        finally:
            self._running = self._stop_asked = False
            self._epoll = None
            epoll.close()  # a worker arming a connection now fails, and closes it
            for fd in list(self._waiting):
                if (connection := self._waiting.pop(fd, None)) is not None:
                    self._close(connection)
            self._pool.stop()
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop the loop and wait for it (idle connections are closed; a connection being served
        is closed when its worker is done with it)."""
        self._stop_asked = True
        self._stopped.wait()

    def _accept(self) -> None:
        for _ in range(ACCEPTS_PER_WAKE):
            try:
                sock, address = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return  # none left, or another worker process took it
            except OSError as exc:  # out of file descriptors, ...: the next wake retries
                log.warning("accept failed: %s", exc)
                return
            with self._count_lock:
                admitted = self.active_connections < self.max_clients
                if admitted:
                    self.active_connections += 1
                else:
                    self.rejected_connections += 1
            if not admitted:
                self._reject(sock)
                continue
            try:
                connection = self.RequestHandlerClass(sock, address, self)
            except OSError as exc:  # reset before its options could be set
                log.debug("connection from %s ended: %s", address[0], exc)
                self._release(sock)
                continue
            self._arm(connection, register=True)

    def _receive(self, connection: Connection, view: memoryview) -> None:
        """The loop's read of a connection that fired: what arrived goes to the connection, and
        a connection with a request ready to a worker."""
        try:
            size = connection.request.recv_into(view, RECEIVE_SIZE, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            self._arm(connection)
            return
        except OSError:
            size = 0
        if not size:  # the client closed (or reset): nothing to answer
            self._close(connection)
        elif connection.received(view[:size]):
            self._pool.submit(connection)
        else:
            self._arm(connection)

    def _serve(self, connection: Connection) -> None:
        try:
            keep = connection.serve()
        except Exception:  # a bug: one logged error (no traceback on stderr), and the connection ends
            log.exception("unhandled error on a connection from %s", connection.client_address[0])
            keep = False
        if keep and self._running:
            self._arm(connection)
        else:
            self._close(connection)

    def _arm(self, connection: Connection, register: bool = False) -> None:
        fd = connection.request.fileno()
        epoll = self._epoll
        if epoll is None:
            self._close(connection)
            return
        self._waiting[fd] = connection
        try:
            (epoll.register if register else epoll.modify)(fd, _ARMED)
        except (OSError, ValueError):  # the loop stopped and closed the set meanwhile
            if self._waiting.pop(fd, None) is not None:
                self._close(connection)

    def _close(self, connection: Connection) -> None:
        sock = connection.request
        epoll = self._epoll
        if epoll is not None:
            try:
                epoll.unregister(sock)
            except (OSError, ValueError):
                pass
        try:
            connection.close()
        finally:
            self._release(sock)

    def _release(self, sock: Socket) -> None:
        try:
            sock.close()
        finally:
            with self._count_lock:
                self.active_connections -= 1

    def _reject(self, sock: Socket) -> None:
        try:
            sock.setblocking(False)  # the loop's thread must not wait on this client
            sock.send(self.reject_bytes)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            sock.close()
