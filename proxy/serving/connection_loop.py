"""The front ends' connections (the gthread model, as gunicorn's `gthread` worker, without its
hand-off): every connection waiting for a request sits in one epoll set; the thread a ready
connection wakes serves what is ready on it (an L1 hit is answered by the thread that read it,
with no queue between) and re-arms it. One such thread, and one more for each STALLED interval
in which none came back for events (held by a slow fetch or a client slow to read). A thread per
connection, each blocked in recv, had 64 threads fighting for the GIL under 64 busy connections
(a convoy: p99 of 126-194 ms); measured on 2 cores, one thread serving L1 hits took 40 µs of CPU
a request, where two took 116 µs and four 107 µs (GIL hand-offs), and 64 in recv 50 µs.

The set is the stdlib's `select.epoll` rather than `selectors`, for EPOLLONESHOT: a connection
that fires is disarmed, so it wakes one thread only, and that thread re-arms it when done.
"""

import logging
import select
import socket
import threading
import time
from typing import Any, Protocol

from proxy.serving.sockets import Gate

log = logging.getLogger(__name__)
Socket = socket.socket  # a name the mixin's `socket` attribute does not hide

_ARMED = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLONESHOT
TICK = 0.05  # seconds between the checks of deadlines and of busy threads
RECEIVE_SIZE = 64 * 1024
ACCEPTS_PER_WAKE = 64  # then the ready connections have their turn
THREADS = 1  # threads that always wait on the set (more share one GIL, and pay for it)
STALLED = 0.05  # no thread back for events this long (a slow fetch, a slow client): one more
AWAY = float("-inf")  # in _busy: the thread is in a wait off the CPU (held however long)
SPARE_LINGER = 0.5  # a spare ends once others have been enough without it this long
SPARE_IDLE = 10.0  # a thread beyond THREADS ends after this long without an event


class Connection(Protocol):
    """What the loop asks of a connection (the front end's request handler)."""

    request: socket.socket
    client_address: Any
    deadline: float  # time.monotonic() at which the loop closes it while it waits

    def received(self, data: memoryview) -> bool:
        """Bytes that arrived; True when a request is ready to serve."""

    def serve(self) -> bool:
        """Serve what is ready; True to wait in the loop for more."""

    def close(self) -> None:
        """Release what the connection holds but its socket, which the loop closes."""

    def closes_on_drain(self) -> bool:
        """The server stops (drain): True to close this connection, waiting in the loop, now;
        False to answer what comes next on it first, the connection's last answer."""


class LoopServerMixIn:
    """A socketserver.TCPServer's serve_forever and shutdown, with the connections in the loop
    (RequestHandlerClass builds a Connection from a socket), at most `max_clients` of them at
    once (the next gets `reject_bytes` and is closed at once, never queued) and at most
    `max_parallel` requests processed at once (the `parallel` gate). serve_forever's own thread
    keeps the time (deadlines, held threads); THREADS others wait for events and serve them."""

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
        self._threads = threads
        self._started = self._waiting_threads = 0  # threads, and those of them in epoll_wait
        self._polled = 0.0  # when a thread last went back to wait for events
        # Threads handling an event: when each took it (time.monotonic()), or AWAY once it began
        # a wait off the CPU. A spare ends as soon as enough others are free to serve.
        self._busy: dict[int, float] = {}
        self._waiting: dict[int, Connection] = {}  # armed in the epoll set, by file number
        self._epoll: select.epoll | None = None
        self._stop_asked = False
        self._stopped = threading.Event()
        self._stopped.set()
        self.draining = False  # drain(): the front ends make each answer a connection's last
        self._closed_to_new = False  # draining, and the listening socket closed
        self._closing_idle = False  # draining: a connection that closes on drain is not re-armed
        self._drained = threading.Event()  # and then the last connection closed
        self.parallel.on_away.append(self._away)

    @property
    def threads(self) -> int:
        """The threads serving this server's connections now (THREADS, plus spares)."""
        return self._started

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        self._stopped.clear()
        self._epoll = epoll = select.epoll()
        listener = self.socket
        listener.setblocking(False)  # shared by pre-forked workers: another may win the accept
        epoll.register(listener.fileno(), _ARMED)
        try:
            for _ in range(self._threads):
                self._spawn(spare=False)
            while not self._stop_asked:
                time.sleep(TICK)
                now = time.monotonic()
                if self.draining and not self._closed_to_new:
                    self._stop_accepting(epoll)
                self._expire(now)
                # No thread back to wait for events in STALLED (slow fetches, clients slow to
                # read): one more, up to a thread per connection, so that ready requests do not
                # wait behind them. (A busy thread is back in microseconds.)
                if not self._waiting_threads and now - self._polled >= STALLED \
                        and self._started < self.max_clients:
                    self._polled = now
                    self._spawn(spare=True)
        finally:
            self._epoll = None
            epoll.close()  # a thread waiting on it wakes; one arming a connection closes it
            for fd in list(self._waiting):
                if (connection := self._waiting.pop(fd, None)) is not None:
                    self._close(connection)
            self._stop_asked = False
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop the loop and wait for it (idle connections are closed; a connection being served
        is closed when its thread is done with it)."""
        self._stop_asked = True
        self._stopped.wait()

    def drain(self) -> None:
        """Begin a graceful stop (a reload's replaced worker, SIGTERM): from the loop's next
        tick no connection is accepted and the waiting ones the front end says may go are
        closed (_stop_accepting); the others end after their next answer (`draining`).
        drained() waits for them; shutdown() then closes what is left."""
        self.draining = True
        if (epoll := self._epoll) is not None:
            try:  # accepts stop now, not at the tick: a reload's old worker takes no more
                epoll.unregister(self.socket.fileno())
            except (OSError, ValueError):  # not registered yet: the tick does it
                pass

    def drained(self, timeout: float) -> bool:
        """After drain(): whether every connection has ended within `timeout` seconds."""
        return self._drained.wait(timeout)

    def _stop_accepting(self, epoll: select.epoll) -> None:
        """drain()'s first step, taken by the thread that registered the listening socket: out
        of the set and closed in this process (pre-forked, the other workers and the parent
        keep it open, so no connection is refused); then the waiting connections that may go."""
        try:
            epoll.unregister(self.socket.fileno())
        except (OSError, ValueError):
            pass
        self.socket.close()
        self._closing_idle = True  # before the sweep: one re-armed during it is closed by _arm
        for fd, connection in list(self._waiting.items()):
            if connection.closes_on_drain() and self._waiting.pop(fd, None) is not None:
                self._close(connection)
        with self._count_lock:
            self._closed_to_new = True
            if not self.active_connections:
                self._drained.set()

    def _away(self) -> None:
        """A thread serving a request begins a wait off the CPU (an upstream fetch, another's
        fetch): when no thread waits for events, one more at once, not after STALLED; a burst
        of cold requests would otherwise be taken one each STALLED. Only for this server's own
        threads: the gate (MAX_PARALLEL) is shared with the other front end, whose waits need
        no thread here."""
        me = threading.get_ident()
        if me not in self._busy:
            return
        self._busy[me] = AWAY
        if self._epoll is not None and not self._waiting_threads \
                and self._started < self.max_clients:
            self._polled = time.monotonic()
            self._spawn(spare=True)

    def _spawn(self, spare: bool) -> None:
        with self._count_lock:
            self._started += 1
            number = self._started
        threading.Thread(target=self._run, args=(spare,), name=f"{type(self).__name__}-{number}",
                         daemon=True).start()

    def _run(self, spare: bool) -> None:
        """One thread: wait for an event, handle it (an accept, or what a connection sent and
        the requests it makes ready), again; a spare thread ends when it has been idle."""
        view = memoryview(bytearray(RECEIVE_SIZE))
        lock, listener, busy = self._count_lock, self.socket.fileno(), self._busy
        me = threading.get_ident()
        idle_since = time.monotonic()
        unneeded_since: float | None = None  # since when others have been enough without it
        try:
            while (epoll := self._epoll) is not None:
                with lock:
                    self._waiting_threads += 1
                self._polled = time.monotonic()
                try:
                    events = epoll.poll(TICK if spare else 1.0, 1)
                except (OSError, ValueError):  # closed: the loop stopped
                    return
                finally:
                    with lock:
                        self._waiting_threads -= 1
                if not events:
                    if spare and time.monotonic() - idle_since > SPARE_IDLE:
                        return
                    continue
                fd = events[0][0]
                busy[me] = time.monotonic()
                try:
                    if fd == listener:
                        self._accept()
                    elif (connection := self._waiting.pop(fd, None)) is not None:
                        self._receive(connection, view)
                finally:
                    del busy[me]
                if spare:
                    now = time.monotonic()
                    idle_since = now
                    if not self._enough_without_me(now):
                        unneeded_since = None
                    elif unneeded_since is None:
                        unneeded_since = now
                    elif now - unneeded_since >= SPARE_LINGER:
                        return
        finally:
            with lock:
                self._started -= 1

    def _enough_without_me(self, now: float) -> bool:
        """True when, this thread gone, THREADS others would still be free to serve: waiting
        for events, or busy for less than STALLED and not away. Spares exist to cover threads
        held by a slow fetch or a slow client; once those are back, each thread more shares one
        GIL and costs every request its hand-offs (measured: one upstream fetch left a second
        thread serving L1 hits, and halved their rate). Ending at once had threads started and
        ended around every fetch of a miss load (7 % of its samples): a spare lingers first."""
        held = sum(1 for since in list(self._busy.values()) if now - since >= STALLED)
        return self._started - 1 - held >= self._threads

    def _expire(self, now: float) -> None:
        """Close the waiting connections past their deadline: idle too long, or a head too slow
        to arrive (slowloris)."""
        for fd, connection in list(self._waiting.items()):
            if connection.deadline <= now and self._waiting.pop(fd, None) is not None:
                self._close(connection)

    def _accept(self) -> None:
        try:
            self._take_connections()
        finally:
            epoll = self._epoll
            try:
                if epoll is not None:
                    epoll.modify(self.socket.fileno(), _ARMED)
            except (OSError, ValueError):  # the loop stopped meanwhile
                pass

    def _take_connections(self) -> None:
        for _ in range(ACCEPTS_PER_WAKE):
            if self.draining:
                return  # the queue's connections are the other workers' (or refused at exit)
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
        """A connection that fired: what arrived goes to it, and what it makes ready is served."""
        try:
            size = connection.request.recv_into(view, RECEIVE_SIZE, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            self._arm(connection)
            return
        except OSError:
            size = 0
        if not size:  # the client closed (or reset): nothing to answer
            self._close(connection)
            return
        try:
            keep = not connection.received(view[:size]) or connection.serve()
        except Exception:  # a bug: one logged error (no traceback on stderr), and the connection ends
            log.exception("unhandled error on a connection from %s", connection.client_address[0])
            keep = False
        if keep:
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
            return
        # Re-armed as the drain's sweep went by (a thread that read `draining` false before it):
        # closed here, or it would hold the drain to its bound. The pop decides who closes it.
        if self._closing_idle and connection.closes_on_drain() \
                and self._waiting.pop(fd, None) is not None:
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
                if self._closed_to_new and not self.active_connections:
                    self._drained.set()

    def _reject(self, sock: Socket) -> None:
        try:
            sock.setblocking(False)  # the loop's thread must not wait on this client
            sock.send(self.reject_bytes)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            sock.close()
