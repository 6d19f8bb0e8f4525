"""The RESP front end: a thin stdlib `socketserver` speaking the Redis protocol (RESP2, and
RESP3 on a connection that asks for it with HELLO 3).

Its connections wait in the connection loop, as the HTTP front end's, and a worker thread runs
what one read brought (proxy/serving/connection_loop.py); the parser and the command table live
in protocol.py and commands.py. Pipelined commands that arrive together are answered
together, in one send, until their replies pass SEND_BATCH: then what is pending goes out before
the next command runs, so a pipelining client that does not read stalls its own commands
instead of piling replies up in the proxy (Redis bounds the same thing with its client output
buffer limits). The replies waiting for their clients, all connections together, are held to
RESP_MAX_PENDING_BYTES (a reply that would pass it gets an error instead: Redis 7 bounds the
same total with maxmemory-clients), and a client that does not take each SEND_BATCH of a reply
within KEEPALIVE_TIMEOUT is disconnected.
"""

import logging
import socket
import socketserver
import time
from typing import Any

from proxy.budgets import ByteBudget
from proxy.resp import protocol as wire
from proxy.resp.commands import LABELS, MAX_KEYS, MAX_REPLY_BYTES, OTHER, RespCommands, label_of
from proxy.resp.protocol import ProtocolError, RespParser, TooManyArguments
from proxy.resp.replies import error as error_reply
from proxy.serving.auth import Authenticator
from proxy.serving.command_counts import CommandCounts
from proxy.serving.connection_loop import LoopServerMixIn
from proxy.serving.metrics import LATENCY_BUCKETS, Metrics
from proxy.serving.rate_limit import RateLimiter
from proxy.serving.sockets import DeadlineReader, Gate, has_input, linger
from redis_proxy import RedisProxy

log = logging.getLogger(__name__)

SEND_BATCH = 64 * 1024  # replies pending past this are sent before the next command runs
# A send may take KEEPALIVE_TIMEOUT plus the time to read its bytes at this rate (about a
# 0.5 Mbit/s link); a client that reads slower is disconnected, and so is one that does not
# take each next SEND_BATCH bytes within KEEPALIVE_TIMEOUT.
MIN_SEND_RATE = 64 * 1024
MAX_PENDING_BYTES = 256 * 1024 * 1024  # RESP_MAX_PENDING_BYTES


class RespServer(LoopServerMixIn, socketserver.TCPServer):
    """Holds the proxy, the command table and the limits; handlers stay thin."""

    allow_reuse_address = True
    request_queue_size = 1024  # the default 5 overflows under 64 connections (CONTRACT §8)
    # What Redis answers over maxclients (src/networking.c acceptCommonHandler), then closes.
    reject_bytes = b"-ERR max number of clients reached\r\n"

    def __init__(self, address: tuple[str, int], proxy: RedisProxy, *, max_clients: int = 1024,
                 max_parallel: int = 4, header_timeout: float = 10.0,
                 keepalive_timeout: float = 15.0, max_array: int = wire.MAX_ARRAY,
                 max_bulk: int = wire.MAX_BULK, authenticator: Authenticator | None = None,
                 parallel: Gate | None = None, rate_limiter: RateLimiter | None = None,
                 max_keys: int = MAX_KEYS, max_reply_bytes: int = MAX_REPLY_BYTES,
                 max_pending_bytes: int = MAX_PENDING_BYTES, metrics: Metrics | None = None):
        self.proxy = proxy
        self.metrics = metrics  # the HTTP front end's, so /metrics counts both
        # Each connection counts its commands in a Tally of these (command_counts.py).
        self.tallies = metrics.resp_commands if metrics is not None else \
            CommandCounts(LATENCY_BUCKETS)
        self.pending = ByteBudget(max_pending_bytes)  # replies built and not yet sent
        self.header_timeout = header_timeout
        self.keepalive_timeout = keepalive_timeout
        self.max_array = max_array
        self.max_bulk = max_bulk
        # The same tokens (and failure budget) and the same rate limiter as HTTP: a client has
        # one budget across both front ends. None means open / no limit, as over HTTP.
        self.commands = RespCommands(proxy, info_extra=self._info, authenticator=authenticator,
                                     rate_limiter=rate_limiter, max_keys=max_keys,
                                     max_reply_bytes=max_reply_bytes)
        self.connections_received = 0
        self.rejected_replies = 0  # over RESP_MAX_PENDING_BYTES
        self.init_limits(max_clients, max_parallel, parallel)
        super().__init__(address, RespHandler)

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def commands_processed(self) -> int:
        """Commands answered, errors included: the connections' tallies summed (read at
        INFO and scrape time; the hot path counts each command once, in its tally)."""
        totals = self.tallies.totals()
        return sum(totals.ok.values()) + sum(totals.failed.values())

    def count(self, connections: int = 0, rejected_replies: int = 0) -> None:
        with self._count_lock:
            self.connections_received += connections
            self.rejected_replies += rejected_replies

    def refused(self, size: int) -> bytes:
        """The error sent in place of a reply of `size` bytes that would pass
        RESP_MAX_PENDING_BYTES (itself not counted: a few bytes per command, while the bound is
        for values)."""
        self.count(rejected_replies=1)
        return error_reply(f"ERR reply of {size} bytes not sent: RESP clients have "
                           f"{self.pending.held} bytes of replies not yet read, and "
                           f"RESP_MAX_PENDING_BYTES is {self.pending.limit}; retry shortly")

    def _info(self) -> dict[str, dict[str, Any]]:
        with self._count_lock:
            return {
                "server": {"tcp_port": self.port},
                "clients": {"connected_clients": self.active_connections,
                            "maxclients": self.max_clients,
                            "pending_reply_bytes": self.pending.held,
                            "max_pending_reply_bytes": self.pending.limit},
                "stats": {"total_connections_received": self.connections_received,
                          "total_commands_processed": self.commands_processed,
                          "rejected_connections": self.rejected_connections,
                          "rejected_replies": self.rejected_replies},
            }


class RespHandler(socketserver.BaseRequestHandler):
    """One client connection: its parser and session; the connection loop calls serve() when
    commands have arrived."""

    server: RespServer

    def __init__(self, request: socket.socket, client_address: Any, server: RespServer):
        # Not the stdlib's, which serves the connection to its end at once: the loop calls serve().
        self.request, self.client_address, self.server = request, client_address, server
        # Replies go out in one send; NODELAY keeps Nagle from holding back the next one.
        request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = DeadlineReader(request, server.keepalive_timeout)
        self.parser = RespParser(server.max_array, server.max_bulk,
                                 max_args=server.commands.max_keys + 1)
        self.session = server.commands.new_session(peer=client_address[0])
        self.held = 0  # bytes of this connection's replies counted in RESP_MAX_PENDING_BYTES
        server.count(connections=1)
        self.deadline = time.monotonic() + server.keepalive_timeout  # closed idle after it
        self._received_at = 0.0
        self.tally = server.tallies.open()  # last: nothing above may leave it open

    def received(self, data: memoryview) -> bool:
        self.parser.feed(data)
        self._received_at = time.monotonic()
        return True  # whether a command is whole is the parser's to say, in serve()

    def serve(self) -> bool:
        """Runs the commands received so far and sends their replies; True to wait for more."""
        try:
            if self._run_commands(self._received_at):
                linger(self.request)
                return False
        except (TimeoutError, ConnectionError, OSError) as exc:
            # A send that failed or timed out: nothing more is written to this client.
            log.debug("RESP connection from %s ended: %s", self.client_address[0], exc)
            return False
        if self.server.draining and self.closes_on_drain():
            return False  # the process stops, and every command received was answered
        # Idle: KEEPALIVE_TIMEOUT; part of a command received: its HEADER_TIMEOUT (_set_deadline).
        deadline = self.reader.deadline
        self.deadline = time.monotonic() + self.server.keepalive_timeout if deadline is None \
            else deadline
        return True

    def close(self) -> None:
        self._give_back()  # whatever ended the connection
        self.server.tallies.close(self.tally)

    def closes_on_drain(self) -> bool:
        """RESP has no way to say "last reply": a connection is closed once nothing of a command
        is received or waiting unread (as Redis closes its clients on SHUTDOWN; a client
        reconnects), else its commands are answered first."""
        return not self.parser.pending and not has_input(self.request)

    def _run_commands(self, started: float) -> bool:
        """Runs every complete command received so far, in order, and sends their replies;
        returns whether to close afterwards. `started`: when this batch's bytes came in."""
        server, session = self.server, self.session
        replies: list[bytes] = []
        pending = answered = 0
        close = False
        # Each command counts in this connection's tally by its label (a fixed set), those
        # answered an error apart; their latency is observed once their replies are sent (or
        # their send failed), as HTTP's after its reply.
        tally, labels = self.tally, LABELS
        unobserved = 0
        try:
            try:
                item = self._next_command()
                while item is not None:
                    # MAX_PARALLEL is taken once for a run of pipelined commands, not per
                    # command, and given back before their replies are sent (a client that does
                    # not read holds no slot).
                    with server.parallel:
                        while item is not None:
                            if isinstance(item, tuple):
                                word, reply = item  # the too-many-arguments error
                            else:
                                word = item[0]
                                reply = server.commands.execute(session, item)
                                if server.pending.take(len(reply)):
                                    self.held += len(reply)  # given back by _send, sent or not
                                else:
                                    reply = server.refused(len(reply))
                            label = labels.get(word) or label_of(word)
                            counts = tally.failed if reply[0] == 45 else tally.ok  # b"-": error
                            counts[label] = counts.get(label, 0) + 1
                            unobserved += 1
                            replies.append(reply)
                            pending += len(reply)
                            answered += 1
                            if session.closing or pending >= SEND_BATCH:
                                break
                            item = self._next_command()
                    if session.closing:
                        close = True
                        break
                    if pending >= SEND_BATCH:
                        self._send(replies)
                        self._observe(unobserved, started)
                        replies, pending, unobserved = [], 0, 0
                        item = self._next_command()
            except ProtocolError as exc:
                # Redis logs these at its verbose level: one client's garbage is not an
                # operator's concern.
                log.debug("RESP protocol error from %s: %s", self.client_address[0], exc)
                replies.append(error_reply(f"ERR Protocol error: {exc}"))
                tally.failed[OTHER] = tally.failed.get(OTHER, 0) + 1
                unobserved += 1
                answered += 1
                close = True
            if replies:
                self._send(replies)
        finally:
            self._observe(unobserved, started)
        self._set_deadline(answered > 0, started)
        return close

    def _observe(self, answered: int, started: float) -> None:
        """The latency of `answered` commands whose bytes came in at `started`: their read to
        now, their replies sent."""
        if answered:
            self.tally.observe(answered, time.monotonic() - started)
            if self.server.metrics is not None:
                self.server.metrics.counted()

    def _next_command(self) -> list[bytes] | tuple[bytes, bytes] | None:
        """The next complete command received, None until more bytes arrive, or (its name, the
        error reply) for a command read and dropped for too many arguments."""
        self.parser.authenticated = self.session.authenticated  # AUTH lifts the limits at once
        try:
            return self.parser.next_command()
        except TooManyArguments as exc:
            return exc.name, self.server.commands.too_many_arguments(exc.name, exc.count)

    def _send(self, replies: list[bytes]) -> None:
        """The replies in one write, or what it left in one sendall within a deadline scaled to
        its size (Python's sendall timeout bounds the whole call, not each write); past
        SEND_BATCH bytes, each SEND_BATCH within KEEPALIVE_TIMEOUT too, so a client that stops
        reading is dropped then, not when the whole reply's allowance runs out (15 min for
        60 MB). Raises on timeout or failure."""
        data = replies[0] if len(replies) == 1 else b"".join(replies)
        idle = self.server.keepalive_timeout
        allowed = idle + len(data) / MIN_SEND_RATE
        try:
            if len(data) <= SEND_BATCH:
                self.reader.send(data, allowed)
                return
            deadline = time.monotonic() + allowed
            for start in range(0, len(data), SEND_BATCH):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("the replies were not taken at MIN_SEND_RATE")
                self.reader.send(data[start:start + SEND_BATCH], min(idle, left))
        finally:
            self._give_back()

    def _give_back(self) -> None:
        if self.held:
            self.server.pending.give_back(self.held)
            self.held = 0

    def _set_deadline(self, progressed: bool, started: float) -> None:
        """Idle between commands: KEEPALIVE_TIMEOUT per read. Part of a command received: the
        rest must arrive within HEADER_TIMEOUT of it, so a trickling client cannot hold a slot.
        The time the proxy spends parsing is not the client's: a command of a million keys takes
        seconds to parse, and was cut off by the deadline before it could be answered."""
        if progressed or not self.parser.pending:
            self.reader.deadline = None
        elif self.reader.deadline is not None:
            self.reader.deadline += time.monotonic() - started
        if self.parser.pending and self.reader.deadline is None:
            self.reader.deadline = time.monotonic() + self.server.header_timeout


def make_server(host: str, port: int, proxy: RedisProxy, **options: Any) -> RespServer:
    """An unstarted server (port 0 picks a free one; read it back from `server.port`).
    `options`: the limits and `authenticator` (default open)."""
    return RespServer((host, port), proxy, **options)
