"""Process wiring: settings, logging, the proxy and its front ends, and a clean stop."""

import ipaddress
import logging
import signal
import socket
import sys
import threading
from types import FrameType

import redis

import logger
from auth import Authenticator, authenticator_of
from errors import ConfigError, LauncherError
from http_front import adopt_listener
from load_env import Settings, load_settings
from rate_limit import RateLimiter, rate_limiter_of
from redis_proxy import RedisProxy

log = logging.getLogger("redis_proxy")


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


def start_front_ends(settings: Settings, proxy: RedisProxy,
                     authenticator: Authenticator | None = None,
                     listeners: list[socket.socket] | None = None,
                     rate_limiter: RateLimiter | None = None) -> list:
    """Bind every configured front end (or take `listeners`, bound already by the parent of
    pre-forked workers) and serve each in its own thread. `authenticator` and `rate_limiter`
    default to the settings' own; made by the parent of workers, they are shared by all."""
    import http_server
    import resp_server
    authenticator = authenticator or authenticator_of(settings)  # one set of tokens for both
    # MAX_PARALLEL bounds the whole process: both front ends draw on one semaphore.
    limits = dict(max_clients=settings.max_clients, max_parallel=settings.max_parallel,
                  parallel=threading.Semaphore(settings.max_parallel),
                  header_timeout=settings.header_timeout,
                  keepalive_timeout=settings.keepalive_timeout)
    # One rate limiter for both front ends: a client's RATE_LIMIT is one budget.
    if rate_limiter is None:  # not `or`: a limiter with no client yet has len() 0
        rate_limiter = rate_limiter_of(settings)
    servers = [http_server.make_server(settings.http_host, 0 if listeners else settings.http_port,
                                       proxy, **limits, authenticator=authenticator,
                                       rate_limiter=rate_limiter)]
    if listeners:
        adopt_listener(servers[0], listeners[0])
    log.info("HTTP on http://%s:%d", settings.http_host, servers[0].port)
    if settings.resp_port:
        try:
            servers.append(resp_server.make_server(settings.http_host,
                                                   0 if listeners else settings.resp_port, proxy,
                                                   **limits, authenticator=authenticator,
                                                   rate_limiter=rate_limiter))
        except OSError:
            servers[0].server_close()  # nothing is served unless every front end could bind
            raise
        if listeners:
            adopt_listener(servers[1], listeners[1])
        log.info("RESP on redis://%s:%d", settings.http_host, servers[1].port)
        servers[0].metrics.watch("resp", servers[1])
        warn_if_resp_exposed(settings.http_host, settings.resp_port, authenticator.enabled)
    for server in servers:
        threading.Thread(target=server.serve_forever, name=type(server).__name__, daemon=True).start()
    return servers


def run(argv: list[str] | None = None) -> int:
    try:
        settings = load_settings()
        try:
            logger.configure(settings.log_level, settings.log_format, settings.log_file or None)
        except OSError as exc:
            raise ConfigError([f"LOG_FILE={settings.log_file!r}: expected a file that can be "
                               f"opened for appending ({exc.strerror})"]) from exc
        authenticator = authenticator_of(settings)  # reads AUTH_TOKENS_FILE; may warn
        # Made before any fork: their buckets live in memory every worker shares, so a client
        # has one RATE_LIMIT and one AUTH_FAIL_LIMIT budget however many workers serve it.
        rate_limiter = rate_limiter_of(settings)
    except ConfigError as exc:
        for problem in exc.problems:
            sys.stderr.write(f"redis-proxy: bad setting {problem}\n")
        return 2
    warn_if_exposed(settings.http_host, authenticator.enabled)
    if settings.http_workers > 1:
        import workers
        try:
            return workers.supervise(settings, lambda s, listeners: serve(
                s, authenticator, listeners, rate_limiter))
        except (LauncherError, OSError) as exc:
            log.error("cannot start: %s", exc)
            return 1
    return serve(settings, authenticator, rate_limiter=rate_limiter)


def serve(settings: Settings, authenticator: Authenticator,
          listeners: list[socket.socket] | None = None,
          rate_limiter: RateLimiter | None = None) -> int:
    """One serving process: the proxy and its front ends until SIGINT or SIGTERM."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    servers = []
    try:
        proxy = RedisProxy.get_instance(settings)
        servers = start_front_ends(settings, proxy, authenticator, listeners, rate_limiter)
        while not stop.wait(3600):
            pass
    except (LauncherError, OSError, ValueError, redis.RedisError) as exc:
        # Messages only: redis-py's name the host and port, never the password; a traceback
        # could show a source line holding the URL.
        log.error("cannot start: %s", exc)
        return 1
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
        RedisProxy.reset_instance()
    log.info("stopped")
    return 0
