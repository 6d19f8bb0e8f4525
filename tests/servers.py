"""Real servers for the tests: a counting upstream, the proxy on port 0 in a thread or as a
process of its own, and the query strings the URL role takes."""

import collections
import http.client
import json
import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote

Route = Callable[["UpstreamHandler"], None]
POLL_INTERVAL = 0.05
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository
PROXY_COMMAND = (sys.executable, "http_server.py")  # what `make run` runs, from ROOT


class UpstreamHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "Upstream"

    def do_GET(self) -> None:  # noqa: N802
        path = self.path.split("?", 1)[0]
        with self.server.lock:
            self.server.hits[path] += 1
            self.server.requests.append((self.path, dict(self.headers)))
        route = self.server.routes.get(path)
        if route is None:
            self.reply(404, b"no such upstream page", {"Content-Type": "text/plain"})
        else:
            route(self)

    def reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        # One request per connection, so stop() really takes the origin away.
        self.send_header("Connection", "close")
        self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


class Upstream(ThreadingHTTPServer):
    """An origin on 127.0.0.1:0 that counts its hits per path and records request headers."""

    daemon_threads = True
    block_on_close = False
    handler_class: type[BaseHTTPRequestHandler] = UpstreamHandler

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), self.handler_class)
        self.lock = threading.Lock()
        self.hits: collections.Counter[str] = collections.Counter()
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.routes: dict[str, Route] = {}
        # A short poll interval: shutdown() waits up to one interval (0.5 s by default).
        self.thread = threading.Thread(target=self.serve_forever, args=(POLL_INTERVAL,), daemon=True)

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "127.0.0.1", self.server_address[1]

    @property
    def port(self) -> int:
        return self.server_address[1]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def serve(self, path: str, body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> str:
        """Answer `path` with a fixed response; returns its URL."""
        fixed = {"Content-Type": "text/plain", **(headers or {})}
        self.routes[path] = lambda h: h.reply(status, body, fixed)
        return self.url(path)

    def route(self, path: str, route: Route) -> str:
        self.routes[path] = route
        return self.url(path)

    def start(self) -> "Upstream":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class Seen:
    """One request as an Origin received it: method, target, header lines in order, body."""

    def __init__(self, method: str, target: str, fields: list[tuple[str, str]], body: bytes):
        self.method, self.target, self.fields, self.body = method, target, fields, body

    def header(self, name: str) -> list[str]:
        return [value for field, value in self.fields if field.lower() == name.lower()]

    def __repr__(self) -> str:
        return f"<Seen {self.method} {self.target} {self.fields} {self.body[:100]!r}>"


class OriginHandler(UpstreamHandler):
    """Any method; the body read by its Content-Length; routes by path see `self.command`."""

    server: "Origin"

    def __getattr__(self, name: str) -> Any:
        if name.startswith("do_"):  # every method, unknown ones too
            return self.do_any
        raise AttributeError(name)

    def do_GET(self) -> None:  # noqa: N802
        self.do_any()

    def do_any(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path = self.path.split("?", 1)[0]
        with self.server.lock:
            self.server.hits[path] += 1
            self.server.hits[f"{self.command} {path}"] += 1
            self.server.seen.append(Seen(self.command, self.path, list(self.headers.items()), body))
        route = self.server.routes.get(path)
        if route is None:
            self.reply(404, b"no such origin page", {"Content-Type": "text/plain"})
        else:
            route(self)

    def reply_fields(self, status: int, body: bytes, fields: list[tuple[str, str]]) -> None:
        """Like reply, with header lines given in order, a name repeated as often as wanted."""
        self.send_response(status)
        for name, value in fields:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class Origin(Upstream):
    """An origin site for reverse-proxy mode: every method, each request recorded in `seen`;
    `hits` counts by path and by "METHOD path"."""

    handler_class = OriginHandler

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Seen] = []

    def counter(self, path: str, body_prefix: bytes = b"version ") -> str:
        """`path` answers GET with `body_prefix` + how many GETs it has had (so a refetch shows
        in the body), and any other method with 204; returns its URL."""
        def route(handler: OriginHandler) -> None:
            if handler.command == "GET":
                handler.reply(200, body_prefix + str(handler.server.hits[f"GET {path}"]).encode())
            else:
                handler.reply_fields(204, b"", [])
        return self.route(path, route)


class ServerThread:
    """Runs any socketserver in a thread; stop() is shutdown() then join()."""

    def __init__(self, server: Any):
        self.server = server
        self.thread = threading.Thread(target=server.serve_forever, args=(POLL_INTERVAL,), daemon=True)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def start(self) -> "ServerThread":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


class Response:
    def __init__(self, status: int, headers: http.client.HTTPMessage, body: bytes):
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.body[:200]!r}>"


def request(port: int, path: str, method: str = "GET", headers: dict[str, str] | None = None,
            timeout: float = 10.0) -> Response:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return Response(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


def raw_exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes, read until the server closes (or the timeout); returns what came back."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except (TimeoutError, ConnectionResetError):
            pass
        return b"".join(chunks)


def refused(port: int) -> bool:
    """Whether nothing accepts connections on 127.0.0.1:`port` any more."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return True
    return False


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.02) -> Any:
    """Poll `predicate` until it returns something truthy, at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


def q(url: str, key: str | None = None, params: str | dict | None = None) -> str:
    """The URL role's request target: `/?url=U[&key=K][&params=P]`, each value percent-encoded;
    `params` as given when a string (it may be invalid on purpose), else as JSON."""
    path = "/?url=" + quote(url, safe="")
    if key is not None:
        path += "&key=" + quote(key, safe="")
    if params is not None:
        path += "&params=" + quote(params if isinstance(params, str) else json.dumps(params), safe="")
    return path


def start_proxy(env: Mapping[str, str], *, stdout: int = subprocess.DEVNULL,
                stderr: int = subprocess.DEVNULL) -> subprocess.Popen:
    """The proxy as a process of its own, started as `make run` starts it, with `env` over this
    environment. Stop it with stop_proxy()."""
    return subprocess.Popen(PROXY_COMMAND, cwd=ROOT, env={**os.environ, **env},
                            stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr)


def run_proxy(env: Mapping[str, str], timeout: float = 30,
              args: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """The proxy process run to its end (one that exits by itself, as on a bad setting, or
    with `--check-config` among `args`), its output captured as text."""
    return subprocess.run((*PROXY_COMMAND, *args), cwd=ROOT, env={**os.environ, **env}, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)


def stop_proxy(process: subprocess.Popen, timeout: float = 15) -> tuple[int, str]:
    """SIGTERM, as a service manager stops it; its exit status and what it wrote to the pipes it
    was given. Killed (and TimeoutExpired raised) when it does not stop in time."""
    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise
    output = ""
    for pipe in (process.stdout, process.stderr):
        if pipe is not None:
            output += pipe.read().decode()
            pipe.close()
    return code, output
