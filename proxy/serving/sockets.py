"""Socket plumbing shared by the front ends: deadline-bounded reads and sends, the lingering
close, the MAX_PARALLEL gate and pre-forked workers' listening socket."""

import io
import socket
import socketserver
import struct
import time
from typing import TYPE_CHECKING

from proxy.budgets import Gate as Gate  # re-exported: the front ends take MAX_PARALLEL's from here

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer


class DeadlineReader(io.RawIOBase):
    """A connection's reads and sends, each bounded in time: reads share one total deadline
    when one is set (the stdlib's per-read timeout alone lets a client trickle one byte at a
    time forever: slowloris), else wait at most `idle_timeout`; `send` bounds a whole reply.

    The socket stays in blocking mode and the kernel bounds each read (SO_RCVTIMEO): with a
    Python timeout every read and send is a poll() and then the call, each letting go of the
    GIL and taking it back, which under load doubled the lock traffic of a hit.
    """

    def __init__(self, sock: socket.socket, idle_timeout: float):
        self.sock = sock
        self.idle_timeout = idle_timeout
        self.deadline: float | None = None
        # Received by the connection loop before a worker reads (connection_loop): read first.
        self.early = bytearray()
        # True: read only `early`, and report "nothing yet" (None) rather than wait on the socket.
        self.nowait = False
        self._receive_timeout = 0.0  # SO_RCVTIMEO as set; 0: none (the socket's default)
        sock.settimeout(None)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: "WriteableBuffer") -> int | None:
        if self.early:
            size = min(len(self.early), memoryview(buffer).nbytes)
            memoryview(buffer)[:size] = self.early[:size]
            del self.early[:size]
            return size
        if self.nowait:
            return None
        if self.deadline is None:
            timeout = self.idle_timeout
        else:
            timeout = self.deadline - time.monotonic()
            if timeout <= 0:
                raise TimeoutError("request headers not received in time")
        if timeout != self._receive_timeout:  # a kept-alive connection's stays as it is
            whole = int(timeout)
            micro = int((timeout - whole) * 1e6) or (0 if whole else 1)  # 0 0 would be "never"
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", whole, micro))
            self._receive_timeout = timeout
        try:
            return self.sock.recv_into(buffer)
        except BlockingIOError:  # SO_RCVTIMEO ran out with nothing received
            raise TimeoutError("timed out") from None

    def send(self, data: bytes, seconds: float) -> None:
        """Send all of `data` within `seconds`. One system call when the socket's buffer takes it
        at once (nearly every reply); else the rest under a Python timeout, which bounds the
        whole send however slowly the client reads. Raises OSError (TimeoutError) on failure."""
        try:
            sent = self.sock.send(data, socket.MSG_DONTWAIT)
        except BlockingIOError:
            sent = 0
        if sent == len(data):
            return
        self.sock.settimeout(seconds)
        try:
            self.sock.sendall(memoryview(data)[sent:])
        finally:
            self.sock.settimeout(None)


LINGER = 1.0  # seconds to drain a refused client's input so the close is a FIN, not a RST
_DRAIN = 64 * 1024


def linger(sock: socket.socket, seconds: float = LINGER) -> None:
    """Close after a final reply to a client that may still be sending (a request body or
    pipelined commands never read): stop sending, then read and drop what still arrives for at
    most `seconds`, so unread input does not turn the close into a reset that loses the reply
    on the client's side (nginx's lingering close)."""
    try:
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            sock.settimeout(remaining)
            if not sock.recv(_DRAIN):
                return
    except OSError:
        pass


def has_input(sock: socket.socket) -> bool:
    """Whether bytes the client sent wait unread in the socket (a close now would reset the
    connection and could lose its answer); False at end of file or on an error."""
    try:
        return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except OSError:  # BlockingIOError: nothing yet
        return False


def adopt_listener(server: socketserver.TCPServer, sock: socket.socket) -> None:
    """Make `server` accept on `sock`, bound and listening already (pre-forked workers all
    accept on the parent's socket; the kernel gives each connection to one of them)."""
    server.socket.close()
    # Every worker wakes for a new connection and one wins it: the others' accept must fail
    # at once (BlockingIOError, which the connection loop ignores) rather than block it.
    sock.setblocking(False)
    server.socket = sock
    server.server_address = sock.getsockname()
    if hasattr(server, "server_port"):
        server.server_port = server.server_address[1]
