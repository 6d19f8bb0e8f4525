"""The entry point (`python http_server.py`, the `redis-proxy` command) and the wiring: the one
place that reads the settings and builds the authenticator, rate limiter, RedisProxy and the
front ends. The HTTP front end itself is proxy/serving/handler.py."""

import dataclasses
import logging
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any

import redis

import logger
from load_env import Settings, load_settings
from proxy.cache.rules import Rules
from proxy.errors import ConfigError, LauncherError, ListenError
from proxy.parts import rules_of
from proxy.process import command_line, warm, workers
from proxy.process.serve import serve, warn_if_exposed, warn_if_resp_exposed
from proxy.process.settings_table import misspelled
from proxy.resp import server as resp_server
from proxy.serving.access_log import AccessLog
from proxy.serving.auth import Authenticator, tokens_of
from proxy.serving.handler import ProxyHandler, ProxyHTTPServer, make_server
from proxy.serving.metrics import Metrics
from proxy.serving.rate_limit import RateLimiter
from proxy.serving.site import Site, Sites
from proxy.serving.sockets import Gate, adopt_listener
from proxy.serving.worker_metrics import WorkerPeers
from redis_proxy import RedisProxy

# The front end is named here too: callers and tests use http_server.make_server and its classes.
__all__ = ["ProxyHTTPServer", "ProxyHandler", "make_server", "authenticator_of", "rate_limiter_of", "sites_of",
           "auth_fail_limiter_of", "start_front_ends", "serve_process", "check_config",
           "warm_cache", "run", "main"]

# ----- the wiring: the one place that reads settings ------------------------------------------

process_log = logging.getLogger("redis_proxy")  # its lines keep this name under `python http_server.py`


def authenticator_of(settings: Settings) -> Authenticator:
    """The authenticator the settings describe (open when no tokens are set)."""
    return Authenticator(tokens_of(settings.auth_tokens, settings.auth_tokens_file),
                         metrics_require_auth=settings.metrics_require_auth,
                         fail_limiter=auth_fail_limiter_of(settings))


def rate_limiter_of(settings: Settings) -> RateLimiter | None:
    """The limiter the settings describe, or None when RATE_LIMIT is not set."""
    if settings.rate_limit is None:
        return None
    return RateLimiter(settings.rate_limit, settings.rate_limit_burst,
                       trusted_proxies=settings.trusted_proxies)


def auth_fail_limiter_of(settings: Settings) -> RateLimiter | None:
    """AUTH_FAIL_LIMIT failed authentications per client per minute, all of them at once if
    need be (the burst), then one every 60/limit seconds; None when it is 0 (off)."""
    if not settings.auth_fail_limit:
        return None
    return RateLimiter(settings.auth_fail_limit / 60.0, settings.auth_fail_limit,
                       trusted_proxies=settings.trusted_proxies)


def sites_of(settings: Settings) -> Sites:
    """The sites the settings describe: one per host of ORIGINS, or ORIGIN_URL's for any Host
    (none: the URL role alone)."""
    def site(origin: str, name: str = "") -> Site:
        return Site(origin, settings.admin_prefix, settings.max_body_bytes, settings.public_host,
                    settings.trusted_proxies, name=name)

    if settings.origins:
        return Sites([site(url, host) for host, url in settings.origins])
    return Sites.one(site(settings.origin_url))


def start_front_ends(settings: Settings, proxy: RedisProxy,
                     authenticator: Authenticator | None = None,
                     listeners: list[socket.socket] | None = None,
                     rate_limiter: RateLimiter | None = None,
                     metrics_folder: str | None = None) -> list[Any]:
    """Bind every configured front end (or take `listeners`, bound already by the parent of
    pre-forked workers) and serve each in its own thread. `authenticator` and `rate_limiter`
    default to the settings' own; made by the parent of workers, they are shared by all.
    `metrics_folder`: where the workers hand each other their figures, so /metrics and /stats
    sum them (worker_metrics)."""
    authenticator = authenticator or authenticator_of(settings)  # one set of tokens for both
    # MAX_PARALLEL bounds the whole process: both front ends draw on one semaphore.
    limits = dict(max_clients=settings.max_clients, max_parallel=settings.max_parallel,
                  parallel=Gate(settings.max_parallel),
                  header_timeout=settings.header_timeout,
                  keepalive_timeout=settings.keepalive_timeout)
    # One rate limiter for both front ends: a client's RATE_LIMIT is one budget.
    if rate_limiter is None:  # not `or`: a limiter with no client yet has len() 0
        rate_limiter = rate_limiter_of(settings)
    metrics = Metrics(proxy, peers=WorkerPeers(metrics_folder) if metrics_folder else None)
    sites = sites_of(settings)
    servers: list[Any] = [make_server(settings.http_host, 0 if listeners else settings.http_port,
                           proxy, **limits, authenticator=authenticator,
                           rate_limiter=rate_limiter, access_log=AccessLog(settings.access_log),
                           get_format=settings.get_format,
                           not_found_body=settings.not_found_body.encode() or None,
                           metrics=metrics, sites=sites)]
    if listeners:
        adopt_listener(servers[0], listeners[0])
    process_log.info("HTTP on http://%s:%d", settings.http_host, servers[0].port)
    for site in sites.sites:
        if site.origin:
            process_log.info("reverse proxy for %s%s; the proxy's own routes under %s",
                             f"{site.name} at " if site.name else "", site.origin, site.admin_prefix)
    if settings.resp_port:
        try:
            servers.append(resp_server.make_server(settings.http_host,
                                                   0 if listeners else settings.resp_port, proxy,
                                                   **limits, authenticator=authenticator,
                                                   rate_limiter=rate_limiter,
                                                   max_pending_bytes=settings.resp_max_pending_bytes,
                                                   metrics=metrics))
        except OSError:
            servers[0].server_close()  # nothing is served unless every front end could bind
            raise
        if listeners:
            adopt_listener(servers[1], listeners[1])
        process_log.info("RESP on redis://%s:%d", settings.http_host, servers[1].port)
        metrics.watch("resp", servers[1])
    if metrics.peers is not None:
        try:
            servers.append(metrics.peers.serve(metrics.snapshot))  # stopped with the front ends
        except OSError as exc:  # a socket path over the AF_UNIX limit (a long TMPDIR), ...
            process_log.warning("this worker's metrics are not shared with the others (%s at "
                                "%s): /metrics shows the worker a scrape reaches", exc,
                                metrics.peers.path)
    for server in servers:
        threading.Thread(target=server.serve_forever, name=type(server).__name__, daemon=True).start()
    return servers


def serve_process(settings: Settings, authenticator: Authenticator,
                  listeners: list[socket.socket] | None = None,
                  rate_limiter: RateLimiter | None = None,
                  metrics_folder: str | None = None,
                  ready: Callable[[], None] | None = None, rules: Rules | None = None) -> int:
    """One serving process: the proxy and its front ends until SIGINT or SIGTERM. The ports
    are bound first, so a port in use stops the start before an embedded Redis is started.
    `rules`: RULES_FILE as the parent read and checked it (None: read here)."""
    bound: list[socket.socket] = []

    def start() -> list[Any]:
        if listeners is None:
            bound.extend(workers.bind_listeners(settings))
        return start_front_ends(settings, RedisProxy.get_instance(settings, rules), authenticator,
                                listeners if listeners is not None else bound, rate_limiter,
                                metrics_folder)

    def close() -> None:
        for listener in bound:
            listener.close()  # adopted by a server (closed already) or never used
        RedisProxy.reset_instance()

    # The drain's bound: a kept-alive connection's idle time, so that every connection waiting
    # for its next request has had its chance to send it (then closes with its answer).
    return serve(start, close, ready, drain=settings.keepalive_timeout)


def check_config(settings: Settings) -> int:
    """--check-config: what run() would refuse, refused the same way (ConfigError); else the
    effective configuration on stdout, secrets masked. Nothing is bound, started or written."""
    problem = command_line.log_file_problem(settings.log_file)
    if problem:
        raise ConfigError([problem])
    authenticator_of(settings)  # reads AUTH_TOKENS_FILE
    rules_of(settings)  # reads RULES_FILE
    sys.stdout.write(command_line.describe(settings))
    return 0


def warm_cache(settings: Settings, options: command_line.Options) -> int:
    """`warm FILE`: the file's URLs fetched through a RedisProxy on the configured Redis, then
    the summary on stdout; 0 when all were stored or fresh, 1 otherwise (see warm.py)."""
    if not settings.redis_configured:
        sys.stderr.write("redis-proxy warm: set REDIS_URL (or --redis-url, REDIS_HOST, a cluster or "
                         "Sentinel) to the Redis to fill; an embedded one would be thrown away\n")
        return 2
    try:
        with open(options.warm_file or "", encoding="utf-8", errors="replace") as file:
            lines = file.readlines()
    except OSError as exc:
        sys.stderr.write(f"redis-proxy warm: cannot read {options.warm_file!r}: {exc.strerror}\n")
        return 2
    try:
        proxy = RedisProxy.from_settings(settings)
    except (redis.RedisError, OSError) as exc:
        process_log.error("cannot warm: %s", exc)
        return 1
    if not proxy.health.check():
        # Every fetch would be answered and thrown away: say so, and fetch nothing.
        sys.stderr.write(f"redis-proxy warm: Redis does not answer at {proxy.redis_label}; nothing "
                         "was fetched or stored (start it, or check REDIS_URL)\n")
        proxy.close()
        return 1
    try:
        summary = warm.warm(proxy, lines, concurrency=options.concurrency, errors=sys.stderr,
                            progress=sys.stderr.isatty(),  # a bar on a terminal only
                            max_fetches=proxy.fetcher.in_flight.slots)
    finally:
        proxy.close()
    sys.stdout.write(summary.text())
    return 0 if summary.ok else 1


def run(argv: list[str] | None = None) -> int:
    options = command_line.parse(argv)  # --help, and a flag argparse cannot take, exit here
    try:
        settings = load_settings(overrides=options.overrides)
        if options.check_config:
            for warning in misspelled():
                sys.stderr.write(f"redis-proxy: warning: {warning}\n")
            return check_config(settings)
        try:
            logger.configure(settings.log_level, settings.log_format, settings.log_file or None)
        except OSError as exc:
            raise ConfigError([f"LOG_FILE={settings.log_file!r}: expected a file that can be "
                               f"opened for appending ({exc.strerror})"]) from exc
        for warning in misspelled():
            process_log.warning("%s", warning)
        if options.warm_file is not None:
            return warm_cache(settings, options)
        authenticator = authenticator_of(settings)  # reads AUTH_TOKENS_FILE; may warn
        rules = rules_of(settings)  # RULES_FILE: a bad one stops the start here, before any fork
        # Made before any fork: their buckets live in memory every worker shares, so a client
        # has one RATE_LIMIT and one AUTH_FAIL_LIMIT budget however many workers serve it.
        rate_limiter = rate_limiter_of(settings)
    except ConfigError as exc:
        for problem in exc.problems:
            sys.stderr.write(f"redis-proxy: bad setting {problem}\n")
        return 2
    # Once, here: not once per worker (nor again for each worker replaced).
    warn_if_exposed(settings.http_host, authenticator.enabled)
    if settings.resp_port:
        warn_if_resp_exposed(settings.http_host, settings.resp_port, authenticator.enabled)
    def serving(authenticator: Authenticator, rate_limiter: RateLimiter | None,
                rules: Rules) -> workers.Serve:
        """Every worker of a configuration serves with the rules read once, here: one started
        again after a crash too, whatever the file says by then (a change waits for SIGHUP)."""
        return lambda s, listeners, folder, ready: serve_process(
            s, authenticator, listeners, rate_limiter, folder, ready, rules)

    running = _Running(settings, authenticator, rate_limiter)  # what the workers serve with now

    def reload() -> tuple[Settings, workers.Serve]:
        """SIGHUP: .env, the environment and the flags read again, and the tokens; ConfigError
        (the running configuration kept) when anything is wrong."""
        new = load_settings(overrides=options.overrides)
        workers.check_reloadable(running.settings, new)
        problem = command_line.log_file_problem(new.log_file)
        if problem:
            raise ConfigError([problem])
        rules = rules_of(new)  # RULES_FILE read again, once: the new workers serve with these
        old = running.settings
        # The failed-authentication and rate buckets live in memory every worker shares: kept
        # while their limits are unchanged, so a reload does not forgive a client.
        fail_limiter = running.authenticator.fail_limiter \
            if (new.auth_fail_limit, new.trusted_proxies) == (old.auth_fail_limit, old.trusted_proxies) \
            else auth_fail_limiter_of(new)
        limiter = running.rate_limiter \
            if (new.rate_limit, new.rate_limit_burst, new.trusted_proxies) == (
                old.rate_limit, old.rate_limit_burst, old.trusted_proxies) else rate_limiter_of(new)
        fresh = Authenticator(tokens_of(new.auth_tokens, new.auth_tokens_file),
                              metrics_require_auth=new.metrics_require_auth, fail_limiter=fail_limiter)
        logger.configure(new.log_level, new.log_format, new.log_file or None)
        for warning in misspelled():
            process_log.warning("%s", warning)
        running.settings, running.authenticator, running.rate_limiter = new, fresh, limiter
        return new, serving(fresh, limiter, rules)

    try:
        return workers.supervise(settings, serving(authenticator, rate_limiter, rules), reload)
    except (LauncherError, ListenError, OSError) as exc:
        process_log.error("cannot start: %s", exc)
        return 1


@dataclasses.dataclass
class _Running:
    """The settings, tokens and rate limiter the workers serve with, replaced by each reload."""

    settings: Settings
    authenticator: Authenticator
    rate_limiter: RateLimiter | None


def main(argv: list[str] | None = None) -> int:
    """Wire settings, logging, Redis and the front ends; serve until Ctrl-C or SIGTERM."""
    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
