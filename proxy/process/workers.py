"""HTTP_WORKERS > 1: pre-forked worker processes accepting on listening sockets bound once.

One Python process is bound by the GIL; workers spread the requests over the cores. The
parent binds the sockets and starts the embedded Redis (when none is configured), then forks
the workers, which inherit the sockets (the kernel hands each connection to one of them) and
each build their own RedisProxy: their L1s stay coherent through Redis's invalidation
messages and their misses coalesce through the fetch lock in Redis. The rate limit's and the
failed-authentication budget's buckets, made before the fork, are in memory they all share
(proxy/serving/shared_buckets.py); MAX_CLIENTS and MAX_PARALLEL bound each worker's own threads. The parent only
supervises: it starts a new worker when one dies and stops them all on SIGINT or SIGTERM, and
on SIGHUP reloads (as `nginx -s reload`): the settings are read again and, when valid, each
worker is replaced by one on the new settings, one at a time, the old one stopped only once the
new one serves; the listening sockets stay open throughout, so no connection is refused.
"""

import dataclasses
import errno
import logging
import os
import select
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable

from load_env import Settings
from proxy.errors import ConfigError, ListenError
from proxy.store.launcher import RedisServer, die_with_parent

log = logging.getLogger(__name__)

STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
# Held back while forking: neither handler may run before the new pid is registered.
MASKED_SIGNALS = STOP_SIGNALS | {signal.SIGHUP}
RESTART_BACKOFF = 1.0  # a worker that dies this soon after its start is restarted this much later
READY_TIMEOUT = 30.0  # a reload's new worker must serve within this, or the reload is abandoned
# What a reload cannot change: the listening sockets are kept open through it (nothing refused).
RESTART_ONLY = ("http_host", "http_port", "resp_port")


def bind_listeners(settings: Settings) -> list[socket.socket]:
    """The HTTP socket (and RESP's when RESP_PORT is set), bound and listening. A port that
    cannot be bound is a ListenError naming the port and the setting that chose it."""
    ports = [("HTTP_PORT", settings.http_port)]
    if settings.resp_port:
        ports.append(("RESP_PORT", settings.resp_port))
    listeners: list[socket.socket] = []
    try:
        for name, port in ports:
            host = settings.http_host
            address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            try:
                family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
                listeners.append(socket.create_server((host, port), family=family, backlog=1024))
            except socket.gaierror as exc:
                raise ListenError(f"HTTP_HOST={host}: not an address to listen on "
                                  f"({exc.strerror}); use an IP address or a local name") from exc
            except OSError as exc:
                flag = "--http-port" if name == "HTTP_PORT" else "--resp-port"
                if exc.errno == errno.EADDRINUSE:
                    why = "is already in use; stop what listens there or choose another port"
                else:
                    why = f"cannot be listened on ({exc.strerror})"
                raise ListenError(f"{name}={port}: {address} {why} ({name} or {flag})") from exc
    except BaseException:
        for listener in listeners:
            listener.close()
        raise
    return listeners


def totals(settings: Settings) -> str:
    """What MAX_CLIENTS and MAX_PARALLEL, which bound each worker's threads, add up to."""
    n = settings.http_workers
    connections = f"{n * settings.max_clients} client connections"
    if settings.resp_port:
        connections += f" to HTTP and {n * settings.max_clients} to RESP,"
    return (f"HTTP_WORKERS={n}: at most {connections} and {n * settings.max_parallel} requests "
            f"in progress in all (MAX_CLIENTS={settings.max_clients} and "
            f"MAX_PARALLEL={settings.max_parallel} are per worker)")


# serve(settings, listeners, metrics_folder, ready): a worker's life; it calls ready() once it serves.
Serve = Callable[[Settings, list[socket.socket], str, Callable[[], None]], int]


def check_reloadable(running: Settings, new: Settings) -> None:
    """ConfigError when `new` changes what only a restart can: the listening sockets stay open
    through a reload, so HTTP_HOST, HTTP_PORT and RESP_PORT stay as they are."""
    changed = [name.upper() for name in RESTART_ONLY if getattr(new, name) != getattr(running, name)]
    if changed:
        raise ConfigError([f"{', '.join(changed)} changed: the listening sockets stay open through "
                           f"a reload; restart to change {'them' if len(changed) > 1 else 'it'}"])
# A reload: the settings read again and the serve function for them; ConfigError when invalid.
Reload = Callable[[], tuple[Settings, Serve]]


def supervise(settings: Settings, serve: Serve, reload: Reload | None = None) -> int:
    """Run `serve(settings, listeners, metrics_folder, ready)` in `settings.http_workers` forked
    processes until a signal stops them; returns the exit status of the whole. The workers
    hand each other their metrics through sockets in `metrics_folder`, a private temporary
    folder made here before the first fork and removed when the last worker has stopped.
    `reload`: what SIGHUP calls for the new settings (None: SIGHUP is ignored)."""
    # A stop asked for as soon as the port answers (before the supervisor's own handlers are
    # in place) is kept, not the default action's kill: the supervisor then starts no worker.
    asked: list[int] = []
    for signum in STOP_SIGNALS:
        signal.signal(signum, lambda signum, _frame: asked.append(signum))
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # nothing to reload yet: not a kill either
    listeners = bind_listeners(settings)  # first: a port in use fails before anything starts
    embedded = None
    metrics_folder = tempfile.mkdtemp(prefix="rp-metrics-")  # mode 0700
    if not settings.redis_configured:
        # One Redis for all the workers, started here so that it outlives any one of them.
        try:
            embedded = RedisServer().start()
        except BaseException:
            for listener in listeners:
                listener.close()
            shutil.rmtree(metrics_folder, ignore_errors=True)
            raise
        log.info("no REDIS_URL or REDIS_HOST set: started an embedded redis-server at %s",
                 embedded.url)
        settings = dataclasses.replace(settings, redis_url=embedded.url)
    log.info("HTTP on http://%s:%d with %d workers", settings.http_host,
             listeners[0].getsockname()[1], settings.http_workers)
    log.info("%s", totals(settings))
    try:
        _Supervisor(settings, serve, listeners, metrics_folder, reload,
                    embedded.url if embedded is not None else "").run(asked)
    finally:
        for listener in listeners:
            listener.close()
        if embedded is not None:
            embedded.cleanup()
        shutil.rmtree(metrics_folder, ignore_errors=True)
    log.info("stopped")
    return 0


class _Supervisor:
    """The parent's loop: fork the workers, start another when one dies, stop them all on
    SIGINT or SIGTERM, replace them one at a time on SIGHUP."""

    def __init__(self, settings: Settings, serve: Serve, listeners: list[socket.socket],
                 metrics_folder: str, reload: Reload | None = None, embedded_url: str = ""):
        self.settings = settings
        self.serve = serve
        self.listeners = listeners
        self.metrics_folder = metrics_folder
        self.reload = reload
        self.embedded_url = embedded_url  # the Redis started here, kept through reloads
        self.children: dict[int, float] = {}  # pid -> start time
        self.retiring: set[int] = set()  # replaced by a reload: not restarted when they exit
        self.parent = os.getpid()
        self.stopping = False
        self.reloading = False

    def run(self, asked: list[int] | None = None) -> None:
        """`asked`: stop signals received before this (nothing is started then)."""
        signal.signal(signal.SIGINT, self.on_signal)
        signal.signal(signal.SIGTERM, self.on_signal)
        signal.signal(signal.SIGHUP, self.on_hangup if self.reload else signal.SIG_IGN)
        if asked:
            self.on_signal(asked[0], None)
        for _ in range(self.settings.http_workers):
            if not self.stopping:
                self.spawn()
        while self.children:
            pid, status = os.wait()
            started = self.children.pop(pid, None)
            if pid in self.retiring:
                self.retiring.discard(pid)
                continue
            if started is None or self.stopping:
                continue
            log.warning("worker %d exited (status %d); starting another", pid,
                        os.waitstatus_to_exitcode(status))
            if time.monotonic() - started < RESTART_BACKOFF:
                time.sleep(RESTART_BACKOFF)  # a worker that cannot start must not spin the CPU
            if not self.stopping:
                self.spawn()

    def spawn(self, wait_ready: bool = False) -> int | None:
        """Fork a worker on the current settings; its pid. `wait_ready`: return only once it
        serves, or None (and the worker stopped) when it has not within READY_TIMEOUT."""
        ready_read, ready_write = os.pipe()
        # Signals wait while forking: the parent's handler must not run before the new pid is
        # registered (it would not be told to stop), nor in the child before its own handlers.
        signal.pthread_sigmask(signal.SIG_BLOCK, MASKED_SIGNALS)
        try:
            pid = os.fork()
        except BaseException:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, MASKED_SIGNALS)
            os.close(ready_read)
            os.close(ready_write)
            raise
        if pid == 0:
            os.close(ready_read)
            self._work(ready_write)
        os.close(ready_write)
        self.children[pid] = time.monotonic()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, MASKED_SIGNALS)
        log.info("worker %d started", pid)
        try:
            if not wait_ready:
                return pid
            # One byte when it serves; end of file when it died before (select retries on EINTR).
            readable, _, _ = select.select([ready_read], [], [], READY_TIMEOUT)
            if readable and os.read(ready_read, 1):
                return pid
        finally:
            os.close(ready_read)
        self.retire(pid)
        return None

    def retire(self, pid: int) -> None:
        """Stop a worker for good (SIGTERM: it finishes what it serves); it is not replaced."""
        self.retiring.add(pid)
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    def _work(self, ready_write: int) -> None:
        """The worker: serve, then leave without running the parent's cleanup."""
        code = 1

        def ready() -> None:
            try:
                os.write(ready_write, b"r")
            except OSError:
                pass  # the parent stopped waiting; it stops this worker

        try:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the parent's to act on
            die_with_parent()
            signal.pthread_sigmask(signal.SIG_UNBLOCK, MASKED_SIGNALS)  # a pending one ends it
            if os.getppid() != self.parent:  # the parent died before PDEATHSIG was armed
                return
            code = self.serve(self.settings, self.listeners, self.metrics_folder, ready)
        except BaseException:  # noqa: BLE001 - a worker must report, then exit
            log.exception("worker %d failed", os.getpid())
        finally:
            logging.shutdown()
            os._exit(code)

    def on_signal(self, signum: int, _frame: object) -> None:
        if not self.stopping:
            log.info("received %s, stopping %d workers", signal.Signals(signum).name,
                     len(self.children))
        self.stopping = True
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        # The parent's copies of the listening sockets: once every draining worker has closed
        # its own, the port refuses new connections at once, rather than queue them until
        # the proxy has stopped and then reset them. (No worker is started while stopping.)
        for listener in self.listeners:
            listener.close()

    def on_hangup(self, _signum: int, _frame: object) -> None:
        if self.stopping or self.reloading:
            return  # a SIGHUP during a reload: that reload reads the files as they are now
        self.reloading = True
        try:
            self._reload()
        finally:
            self.reloading = False

    def _reload(self) -> None:
        """SIGHUP: the settings read again; when valid, every worker replaced, one at a time."""
        assert self.reload is not None
        log.info("received SIGHUP, reloading the configuration")
        try:
            settings, serve = self.reload()
        except ConfigError as exc:
            log.error("reload refused, the running configuration kept: %s", "; ".join(exc.problems))
            return
        if self.embedded_url and not settings.redis_configured:
            settings = dataclasses.replace(settings, redis_url=self.embedded_url)
        old, previous = list(self.children), (self.settings, self.serve)
        self.settings, self.serve = settings, serve
        for index in range(max(len(old), settings.http_workers)):
            if self.stopping:
                return
            if index < settings.http_workers and self.spawn(wait_ready=True) is None:
                log.error("reload abandoned: a worker on the new configuration did not serve "
                          "within %g s; %s", READY_TIMEOUT,
                          "the running workers are kept" if index == 0 else
                          f"{index} of {len(old)} workers were replaced")
                if index == 0:
                    self.settings, self.serve = previous
                return
            if index < len(old):
                self.retire(old[index])
        log.info("reloaded: %d workers on the new configuration", settings.http_workers)
