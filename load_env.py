"""Settings: one frozen object read from `.env` and the environment (the environment wins)."""

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any

from dotenv import dotenv_values

import proxy.settings_parsers as parsers
from proxy.errors import ConfigError
from proxy.settings_checks import cross_checks

EVICTION_POLICIES = (
    "noeviction", "allkeys-lru", "allkeys-lfu", "allkeys-random",
    "volatile-lru", "volatile-lfu", "volatile-random", "volatile-ttl",
)

# Groups of the settings table, in the order the docs, `.env` and `--help` list them: key -> the
# heading, and one line on the group as a whole.
GROUPS = {
    "redis": ("Backing Redis", "leave REDIS_URL and REDIS_HOST empty to start an embedded redis-server"),
    "front": ("Front ends", "where the proxy listens and how many clients it serves at once"),
    "caching": ("Caching", "how long entries live in Redis and in the local L1 cache"),
    "upstream": ("Upstream", "which URLs may be fetched, and the limits on a fetch"),
    "reverse": ("Reverse proxy", "ORIGIN_URL puts the proxy in front of one site, ORIGINS in front of several, as nginx or Varnish"),
    "security": ("Security", "tokens, trusted reverse proxies and rate limits"),
    "logging": ("Logging", "where the log goes and how much of it"),
}


def _setting(env: str, parse: Callable[[str], Any], default: Any, group: str = "", meaning: str = "",
             **extra: Any) -> Any:
    """One row of the settings table. `meaning` is one line (Markdown backticks allowed) for
    the README, docs/CONFIGURATION.md, `.env` and `--help`; `extra`: `flags` (short aliases of
    the command line), `shown` (the default as the docs state it, when the value alone would
    mislead), `derive` (the default computed from the other settings when this one is unset),
    `secret` (masked by --check-config)."""
    return dataclasses.field(default=default, metadata={"env": env, "parse": parse, "group": group,
                                                        "meaning": meaning, **extra})


# A derived default is computed from the settings as read (each `derive` below is called with
# them and with `given`, the names of the fields that were set), only for a field left unset.

def _stale_if_error_default(settings: "Settings", given: frozenset[str]) -> float:
    # A default must not conflict with a setting the user chose: 300, or the stale window if less.
    return min(300.0, settings.cache_stale_ttl)


def _default_freshness_default(settings: "Settings", given: frozenset[str]) -> str:
    # In front of a site (ORIGIN_URL) the origin's headers decide, as in nginx or Varnish; the
    # URL role keeps the card's CACHE_TTL for a response that states nothing.
    return "rfc" if settings.origin_url or settings.origins else "ttl"


def _rfc_mode(settings: "Settings", given: frozenset[str]) -> bool:
    """Whether DEFAULT_FRESHNESS is `rfc`, as set or as it defaults."""
    freshness = settings.default_freshness if "default_freshness" in given \
        else _default_freshness_default(settings, given)
    return freshness == "rfc"


# RFC 9110 §15.1: the statuses heuristically cacheable by default (proxy.cache.freshness's
# HEURISTIC_STATUSES; a unit test holds the two equal, this module importing no cache code).
HEURISTIC_STATUSES = frozenset({200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501})


def _store_statuses_default(settings: "Settings", given: frozenset[str]) -> frozenset[int]:
    # An RFC 9111 cache stores what the RFC lets it reuse by default; the URL role any 2xx.
    return HEURISTIC_STATUSES if _rfc_mode(settings, given) else frozenset(range(200, 300))


def _ttl_caps_origin_default(settings: "Settings", given: frozenset[str]) -> bool:
    # With rfc, the origin's max-age / s-maxage / Expires decide, unless CACHE_TTL is set: an
    # operator who sets it means it as a ceiling; its default is only the URL role's SETEX TTL.
    return "cache_ttl" in given or not _rfc_mode(settings, given)


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every tunable of the proxy; the table that docs/CONFIGURATION.md is generated from."""

    redis_url: str = _setting("REDIS_URL", parsers.text, "", "redis",
                              "backing Redis (`redis://`, `rediss://`, `unix://`, with user and password); "
                              "empty with `REDIS_HOST` empty = embedded", flags=("-r",))
    redis_host: str = _setting("REDIS_HOST", parsers.text, "", "redis",
                               "Redis host when there is no `REDIS_URL`; empty with `REDIS_URL` empty = embedded")
    redis_port: int = _setting("REDIS_PORT", parsers.integer(1, 65535), 6379, "redis",
                               "Redis port with `REDIS_HOST`")
    redis_db: int = _setting("REDIS_DB", parsers.integer(0), 0, "redis", "Redis database number with `REDIS_HOST`")
    redis_password: str = _setting("REDIS_PASSWORD", parsers.text, "", "redis",
                                   "Redis password, given to the client apart from the URL; never logged",
                                   secret=True)
    redis_socket_timeout: float = _setting("REDIS_SOCKET_TIMEOUT", parsers.seconds(True), 0.5, "redis",
                                           "bound on one Redis call (connect and read)")
    redis_tls_ca: str = _setting("REDIS_TLS_CA", parsers.text, "", "redis", "CA certificate file for `rediss://`")
    redis_tls_cert: str = _setting("REDIS_TLS_CERT", parsers.text, "", "redis",
                                   "client certificate file for `rediss://` (with `REDIS_TLS_KEY`)")
    redis_tls_key: str = _setting("REDIS_TLS_KEY", parsers.text, "", "redis", "the client certificate's key file")
    redis_max_connections: int = _setting("REDIS_MAX_CONNECTIONS", parsers.integer(1), 64, "redis",
                                          "connection pool size; a burst waits for a connection")
    redis_maxmemory: int = _setting("REDIS_MAXMEMORY", parsers.size, 256 * 1024**2, "redis",
                                    "`maxmemory`, applied with `CONFIG SET` at start (on every primary of a "
                                     "cluster) and on each primary a failover promotes; a refusal is a "
                                     "warning")
    redis_eviction_policy: str = _setting("REDIS_EVICTION_POLICY", parsers.choice(*EVICTION_POLICIES),
                                          "allkeys-lru", "redis",
                                          "`maxmemory-policy`, applied with `CONFIG SET` at start and on "
                                          "each primary a failover promotes; a refusal is a warning")
    redis_cluster_nodes: tuple[str, ...] = _setting("REDIS_CLUSTER_NODES", parsers.addresses, (), "redis",
                                                    "seed nodes of a Redis Cluster (`host:port,...`), "
                                                    "instead of `REDIS_URL`")
    redis_sentinels: tuple[str, ...] = _setting("REDIS_SENTINELS", parsers.addresses, (), "redis",
                                                "Sentinel addresses (`host:port,...`), instead of "
                                                "`REDIS_URL`; with `REDIS_SENTINEL_MASTER`")
    redis_sentinel_master: str = _setting("REDIS_SENTINEL_MASTER", parsers.text, "", "redis",
                                          "the name the sentinels monitor the primary under")
    http_host: str = _setting("HTTP_HOST", parsers.text, "127.0.0.1", "front",
                              "listen address of the HTTP and RESP ports", flags=("--host",))
    http_port: int = _setting("HTTP_PORT", parsers.integer(0, 65535), 8080, "front", "HTTP listen port",
                              flags=("-p", "--port"))
    resp_port: int = _setting("RESP_PORT", parsers.integer(0, 65535), 6380, "front",
                              "Redis-protocol (RESP) listen port; 0 = off")
    get_format: str = _setting("GET_FORMAT", parsers.choice("raw", "json"), "raw", "front",
                               "`GET /get/<key>`'s form when the request's `Accept` does not choose "
                               "one: `raw` (the value's bytes) or `json` (`{\"key\", \"value\", \"source\"}`)")
    not_found_body: str = _setting("NOT_FOUND_BODY", parsers.text, "", "front",
                                   "the body of `/get/<key>`'s 404 (JSON when it parses as JSON, else "
                                   "plain text), for clients written for another proxy; empty = the "
                                   "proxy's own JSON error")
    cache_ttl: float = _setting("CACHE_TTL", parsers.seconds(True), 3600.0, "caching",
                                "freshness of an entry at most, and the L1 expiry")
    cache_capacity: int = _setting("CACHE_CAPACITY", parsers.integer(0), 1024, "caching",
                                   "L1 bound in keys (least recently used beyond it); 0 = no L1")
    cache_max_bytes: int = _setting("CACHE_MAX_BYTES", parsers.size, 64 * 1024**2, "caching",
                                    "L1 bound in bytes of values")
    cache_prefix: str = _setting("CACHE_PREFIX", parsers.text, "rp:", "caching",
                                 "Redis key prefix of URL entries: key K is stored as `rp:K`")
    get_allow_cache_prefix: bool = _setting("GET_ALLOW_CACHE_PREFIX", parsers.boolean, False, "security",
                                            "let `/get/<key>` and RESP read keys under `CACHE_PREFIX` "
                                            "(the URL cache's entries, with no upstream policy applied)")
    l1_invalidation: str = _setting("L1_INVALIDATION", parsers.choice("tracking", "ttl"), "tracking", "caching",
                                    "`tracking`: L1 follows Redis's invalidation messages; `ttl`: L1 "
                                    "entries expire by `CACHE_TTL` only (a `/get/` or RESP value sooner, "
                                    "with its key's own TTL in Redis)")
    max_clients: int = _setting("MAX_CLIENTS", parsers.integer(1), 1024, "front",
                                "concurrent connections per front end, per worker (`HTTP_WORKERS` × this in all); "
                                 "one more gets 503 at once")
    max_parallel: int = _setting("MAX_PARALLEL", parsers.integer(1), 2 * (os.cpu_count() or 1), "front",
                                 "requests processed at once, HTTP and RESP together (`/health` and "
                                 "`/metrics` are not counted, nor a request while it waits on an upstream "
                                 "fetch: see `MAX_FETCHES`), per worker (`HTTP_WORKERS` × this in all); 1 = one "
                                  "at a time, in arrival order",
                                 shown="2 × cores")
    max_fetches: int = _setting("MAX_FETCHES", parsers.integer(1), 64, "upstream",
                                "upstream fetches in flight at once, per worker; one more waits up to 1 s "
                                "for one to end, then gets 503 (`Retry-After: 1`), or a stored copy that "
                                "stale-if-error allows. A request waiting on an upstream holds no "
                                "`MAX_PARALLEL` slot")
    upstream_timeout: float = _setting("UPSTREAM_TIMEOUT", parsers.seconds(True), 10.0, "upstream",
                                       "total deadline of one fetch, redirects and body included; no retries")
    upstream_max_bytes: int = _setting("UPSTREAM_MAX_BYTES", parsers.size, 10 * 1024**2, "upstream",
                                       "upstream body cap; a larger body is 413 and not stored")
    upstream_allowed_hosts: tuple[str, ...] = _setting("UPSTREAM_ALLOWED_HOSTS", parsers.hosts, (), "upstream",
                                                       "exact names or `*.suffix` (`*.example.com` does not "
                                                       "match `example.com`); empty = any public host")
    upstream_allowed_ports: tuple[int, ...] = _setting("UPSTREAM_ALLOWED_PORTS", parsers.ports,
                                                       (80, 443, 8080, 8443), "upstream", "upstream ports")
    upstream_allow_private: bool = _setting("UPSTREAM_ALLOW_PRIVATE", parsers.boolean, False, "upstream",
                                            "allow loopback and private upstream addresses (internal "
                                            "deployments, tests)")
    max_url_bytes: int = _setting("MAX_URL_BYTES", parsers.integer(1), 8192, "upstream",
                                  "longest `url` accepted; a longer one is 414")
    max_key_bytes: int = _setting("MAX_KEY_BYTES", parsers.integer(1), 1024, "upstream",
                                  "longest `key` accepted; a longer one is 400")
    resp_max_pending_bytes: int = _setting("RESP_MAX_PENDING_BYTES", parsers.size, 256 * 1024**2, "front",
                                           "reply bytes held for RESP clients that have not read them yet, "
                                           "all connections together, per worker; a reply that would pass it "
                                           "gets `-ERR` instead")
    header_timeout: float = _setting("HEADER_TIMEOUT", parsers.seconds(True), 10.0, "front",
                                     "total time to receive a request's headers")
    keepalive_timeout: float = _setting("KEEPALIVE_TIMEOUT", parsers.seconds(True), 15.0, "front",
                                        "idle time before a kept-alive connection is closed, and "
                                        "before a RESP client that stops taking its replies is")
    cache_store_statuses: frozenset[int] = _setting("CACHE_STORE_STATUSES", parsers.statuses,
                                                    frozenset(range(200, 300)), "caching",
                                                    "upstream statuses that are stored (`2xx,404`)",
                                                    derive=_store_statuses_default,
                                                    shown="`2xx`; with `DEFAULT_FRESHNESS=rfc`, the "
                                                          "heuristically cacheable ones (200, 203, 204, 206, "
                                                          "300, 301, 308, 404, 405, 410, 414, 501)")
    cache_store_set_cookie: bool = _setting("CACHE_STORE_SET_COOKIE", parsers.boolean, False, "caching",
                                            "store responses that set cookies")
    respect_cache_control: bool = _setting("RESPECT_CACHE_CONTROL", parsers.boolean, True, "caching",
                                           "honour the upstream's `Cache-Control` / `Expires`")
    default_freshness: str = _setting("DEFAULT_FRESHNESS", parsers.choice("ttl", "rfc"), "ttl", "caching",
                                      "a response stating no freshness: `ttl` = fresh for `CACHE_TTL`; "
                                      "`rfc` = heuristic (RFC 9111 §4.2.2), else revalidated before use",
                                      derive=_default_freshness_default,
                                      shown="`ttl`, or `rfc` with `ORIGIN_URL` or `ORIGINS`")
    cache_ttl_caps_origin: bool = _setting("CACHE_TTL_CAPS_ORIGIN", parsers.boolean, True, "caching",
                                           "`CACHE_TTL` also caps the freshness an origin states "
                                           "(`s-maxage`, `max-age`, `Expires`)",
                                           derive=_ttl_caps_origin_default,
                                           shown="`true`; with `DEFAULT_FRESHNESS=rfc`, `true` only "
                                                 "when `CACHE_TTL` is set")
    heuristic_fraction: float = _setting("HEURISTIC_FRACTION", parsers.fraction, 0.1, "caching",
                                         "with `DEFAULT_FRESHNESS=rfc`: fresh for this fraction of the "
                                         "time since `Last-Modified`")
    heuristic_max_age: float = _setting("HEURISTIC_MAX_AGE", parsers.seconds(False), 86400.0, "caching",
                                        "the cap on heuristic freshness, seconds")
    max_stored_headers: int = _setting("MAX_STORED_HEADERS", parsers.integer(1), 100, "caching",
                                       "a response with more header fields is relayed, not stored")
    max_stored_header_bytes: int = _setting("MAX_STORED_HEADER_BYTES", parsers.size, 32 * 1024, "caching",
                                            "a response whose header block is larger is relayed, not stored")
    cache_stale_ttl: float = _setting("CACHE_STALE_TTL", parsers.seconds(False), 300.0, "caching",
                                      "seconds an entry stays in Redis past its freshness (revalidation, "
                                      "stale serving)")
    stale_if_error: float = _setting("STALE_IF_ERROR", parsers.seconds(False), 300.0, "caching",
                                     "seconds past freshness a stale copy may be served when upstream "
                                     "fails; at most `CACHE_STALE_TTL`",
                                     derive=_stale_if_error_default,
                                     shown="300, or `CACHE_STALE_TTL` when less")
    stale_while_revalidate: float = _setting("STALE_WHILE_REVALIDATE", parsers.seconds(False), 0.0, "caching",
                                             "seconds past freshness a stale copy is served at once while "
                                             "one background refresh runs; 0 = off")
    refresh_ahead: float = _setting("REFRESH_AHEAD", parsers.fraction_below_one, 0.0, "caching",
                                    "fraction of an entry's freshness after which a hit starts one "
                                    "background refresh (`0.8`); 0 = off")
    compress_min_bytes: int = _setting("COMPRESS_MIN_BYTES", parsers.size, 1024, "caching",
                                       "text, JSON, JS, CSS, XML and SVG bodies this large are stored "
                                       "compressed (zstd) and served so to clients that accept it; 0 = off")
    max_variants: int = _setting("MAX_VARIANTS", parsers.integer(1), 8, "caching",
                                 "variants of one URL (responses selected by their `Vary` headers) "
                                 "kept at once; beyond it the least recently stored (but the first) is replaced")
    tag_header: tuple[str, ...] = _setting("TAG_HEADER", parsers.header_names, ("Surrogate-Key", "Cache-Tag"),
                                           "caching",
                                           "response headers whose space- or comma-separated tags "
                                           "`DELETE /?tag=T` purges by; empty = off")
    tag_header_shown: bool = _setting("TAG_HEADER_SHOWN", parsers.boolean, False, "caching",
                                      "give clients the tags (in the first `TAG_HEADER`); false = "
                                      "stripped")
    rules_file: str = _setting("RULES_FILE", parsers.text, "", "caching",
                               "a TOML file of rules by host, path and status: TTL default/min/max, "
                               "bypass, query parameters and request headers in the cache key, "
                               "stale windows (README, Rules per path); re-read by each reload; "
                               "empty = none")
    http_workers: int = _setting("HTTP_WORKERS", parsers.workers, os.cpu_count() or 1, "front",
                                 "pre-forked worker processes sharing the HTTP and RESP ports; "
                                 "`auto` = one per core (nginx's `worker_processes auto`)",
                                 flags=("-w", "--workers"), shown="`auto` (one per core)")
    origin_url: str = _setting("ORIGIN_URL", parsers.origin, "", "reverse",
                               "reverse-proxy mode: a path that is not under `ADMIN_PREFIX` is fetched from "
                               "this origin (`http://host:port[/base]`) and cached; empty = off")
    origins: tuple[tuple[str, str], ...] = _setting(
        "ORIGINS", parsers.origins, (), "reverse",
        "several sites: comma-separated `HOST=URL` pairs, such as `a.example=http://10.0.0.1:8081`, "
        "`*.b.example=http://10.0.0.2:8082`; a request's `Host` (port ignored) picks its site's "
        "origin, another `Host` is 421; instead of `ORIGIN_URL`")
    admin_prefix: str = _setting("ADMIN_PREFIX", parsers.prefix, "/_proxy", "reverse",
                                 "where the proxy's own routes answer (`/_proxy/health`, `/_proxy/?url=`); "
                                 "without `ORIGIN_URL` or `ORIGINS` they answer at the root too")
    max_body_bytes: int = _setting("MAX_BODY_BYTES", parsers.size, 1024**2, "reverse",
                                   "largest request body passed through to the origin (POST, PUT...); a "
                                   "larger one is 413")
    public_host: str = _setting("PUBLIC_HOST", parsers.host, "", "reverse",
                                "the site's public host name, sent to the origin as `X-Forwarded-Host` "
                                "(the client's `Host` never is); empty = the origin's own host; "
                                "not with `ORIGINS` (each site's own `Host` is sent)")
    trusted_proxies: tuple[str, ...] = _setting("TRUSTED_PROXIES", parsers.networks, (), "security",
                                                "addresses or CIDR networks of reverse proxies whose "
                                                "`X-Forwarded-For` is believed (and, in reverse-proxy "
                                                "mode, whose forwarding fields reach the origin)")
    auth_tokens: tuple[str, ...] = _setting("AUTH_TOKENS", parsers.words, (), "security",
                                            "bearer tokens for HTTP (`Authorization: Bearer`) and RESP "
                                            "(`AUTH`), comma-separated; none here or in the file = open",
                                            secret=True)
    auth_tokens_file: str = _setting("AUTH_TOKENS_FILE", parsers.text, "", "security",
                                     "a file of tokens, one per line (`#` comments allowed)")
    metrics_require_auth: bool = _setting("METRICS_REQUIRE_AUTH", parsers.boolean, True, "security",
                                          "`/metrics` needs a token (when tokens are set); `false` opens it alone "
                                          "to a scraper without one (`/stats` and `/dashboard` always need it)")
    rate_limit: float | None = _setting("RATE_LIMIT", parsers.optional_seconds, None, "security",
                                        "requests (HTTP) and commands (RESP) per second per client address "
                                        "(decimals allowed), one budget across all workers; "
                                        "empty = no limit", shown="off")
    rate_limit_burst: int | None = _setting("RATE_LIMIT_BURST", parsers.integer(1), None, "security",
                                            "requests a client may make at once beyond its rate",
                                            shown="2 × rate")
    auth_fail_limit: int = _setting("AUTH_FAIL_LIMIT", parsers.integer(0), 10, "security",
                                    "failed authentications per client per minute (HTTP and RESP "
                                    "together, across all workers) before it is refused with 429 / an error; 0 = off")
    log_level: str = _setting("LOG_LEVEL", parsers.choice("debug", "info", "warning", "error"), "info", "logging",
                              "how much is logged; the access lines are at `info`",
                              flags=("-l",))
    log_format: str = _setting("LOG_FORMAT", parsers.choice("text", "json"), "text", "logging",
                               "`text`, or `json` with one object a line")
    log_file: str = _setting("LOG_FILE", parsers.text, "", "logging", "a file the log is appended to; empty = stderr")
    access_log: bool = _setting("ACCESS_LOG", parsers.boolean, True, "logging",
                                "one line per HTTP request (method, path, status, cache status, bytes, "
                                "duration, client) at `info` on the `redis_proxy.access` logger")

    @property
    def redis_configured(self) -> bool:
        """CONTRACT §3: Redis counts as configured when REDIS_URL or REDIS_HOST is set."""
        return bool(self.redis_url or self.redis_host or self.redis_cluster_nodes
                    or self.redis_sentinels)


def load_settings(environ: Mapping[str, str] | None = None, env_file: str | None = ".env",
                  overrides: Mapping[str, str] | None = None) -> Settings:
    """Read every setting: `overrides` (the command line's flags, by variable name) over the
    environment over `env_file`; raise ConfigError naming each bad one."""
    values: dict[str, str | None] = dict(dotenv_values(env_file)) if env_file and os.path.exists(env_file) else {}
    values.update(os.environ if environ is None else environ)
    values.update(overrides or {})
    problems: list[str] = []
    kwargs: dict[str, Any] = {}
    for field in dataclasses.fields(Settings):
        name, parse = field.metadata["env"], field.metadata["parse"]
        raw = values.get(name)
        if raw is None or raw.strip() == "":
            continue  # unset or empty: the default
        try:
            kwargs[field.name] = parse(raw.strip() if parse is not parsers.text else raw)
        except ValueError as exc:
            # The value of a secret is never echoed back.
            shown = "<hidden>" if "PASSWORD" in name or "TOKEN" in name else repr(raw)
            source = " (from the command line)" if overrides and name in overrides else ""
            problems.append(f"{name}={shown}{source}: expected {parse.expected}"
                            + (f"; {exc}" if isinstance(exc, parsers.Invalid) else ""))
    settings = Settings(**kwargs) if not problems else None
    if settings is not None:
        given = frozenset(kwargs)
        derived = {field.name: field.metadata["derive"](settings, given)
                   for field in dataclasses.fields(Settings)
                   if "derive" in field.metadata and field.name not in kwargs}
        settings = dataclasses.replace(settings, **derived)
        problems.extend(cross_checks(settings))
    if problems:
        raise ConfigError(problems)
    assert settings is not None
    return settings
