"""A RedisProxy's parts as the settings describe them: the Redis client (configured, embedded,
a cluster or Sentinel's primary), the upstream fetcher, the L1, the freshness policy and
RULES_FILE's rules. RedisProxy.from_settings() puts them together."""

import logging
from collections.abc import Callable
from typing import Any

import redis
from redis.exceptions import RedisClusterException

from load_env import Settings
from proxy.cache.freshness import Policy
from proxy.cache.local_cache import LocalCache
from proxy.cache.rules import NO_RULES, Rules, RulesError, parse_rules
from proxy.errors import ConfigError
from proxy.store.connection import make_client, mask_url
from proxy.store.launcher import RedisServer
from proxy.store.sentinel import make_sentinel_client
from proxy.store.topology import make_cluster_client
from proxy.upstream.fetcher import Fetcher
from proxy.upstream.policy import UpstreamPolicy

# Its lines keep the name they had when this was part of redis_proxy.py (log filters, tests).
log = logging.getLogger("redis_proxy")


def redis_client_of(settings: Settings) -> tuple[Any, str, list[Callable[[], None]]]:
    """The Redis client `settings` describe, the label logs and /health show for it (its
    password masked), and what closes with the proxy: an embedded redis-server started when
    none is configured."""
    on_close: list[Callable[[], None]] = []
    client: Any
    if settings.redis_cluster_nodes or settings.redis_sentinels:
        client, url = scaled_out_client(settings)
    else:
        if settings.redis_configured:
            url = redis_url_of(settings)
        else:
            embedded = RedisServer().start()
            on_close.append(embedded.cleanup)
            url = embedded.url
            log.info("no REDIS_URL or REDIS_HOST set: started an embedded redis-server at %s", url)
        client = make_client(url, socket_timeout=settings.redis_socket_timeout,
                             max_connections=settings.redis_max_connections,
                             password=settings.redis_password or None, tls_ca=settings.redis_tls_ca,
                             tls_cert=settings.redis_tls_cert, tls_key=settings.redis_tls_key)
    return client, mask_url(url), on_close


def fetcher_of(settings: Settings) -> Fetcher:
    """The upstream fetcher, its deadline, body cap and budget, under UPSTREAM_ALLOWED_*."""
    return Fetcher(timeout=settings.upstream_timeout, max_bytes=settings.upstream_max_bytes,
                   max_fetches=settings.max_fetches,
                   policy=UpstreamPolicy(allowed_hosts=settings.upstream_allowed_hosts,
                                         allowed_ports=settings.upstream_allowed_ports,
                                         allow_private=settings.upstream_allow_private))


def local_cache_of(settings: Settings) -> LocalCache:
    """The L1: CACHE_CAPACITY keys, CACHE_MAX_BYTES of values, CACHE_TTL at most."""
    return LocalCache(capacity=settings.cache_capacity, max_bytes=settings.cache_max_bytes,
                      ttl=settings.cache_ttl)


def policy_of(settings: Settings) -> Policy:
    """What is stored and for how long (proxy.cache.freshness), as the caching settings say."""
    return Policy(ttl=settings.cache_ttl, store_statuses=settings.cache_store_statuses,
                  store_set_cookie=settings.cache_store_set_cookie,
                  respect_cache_control=settings.respect_cache_control,
                  default_freshness=settings.default_freshness,
                  ttl_caps_origin=settings.cache_ttl_caps_origin,
                  heuristic_fraction=settings.heuristic_fraction,
                  heuristic_max=settings.heuristic_max_age,
                  max_headers=settings.max_stored_headers,
                  max_header_bytes=settings.max_stored_header_bytes)


def rules_of(settings: Settings) -> Rules:
    """RULES_FILE read and checked (proxy.cache.rules): at start, by --check-config and by each
    reload, so that a bad file is refused as a bad setting is (ConfigError, every problem with
    its line); no rules when it is not set."""
    path = settings.rules_file
    if not path:
        return NO_RULES
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as exc:
        raise ConfigError([f"RULES_FILE={path}: cannot be read ({exc.strerror}); expected a "
                           "readable TOML file of [[rule]] tables"]) from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError([f"RULES_FILE={path}: line {line}: byte 0x{data[exc.start]:02x} is not "
                           "UTF-8; expected a TOML file, which is UTF-8"]) from exc
    try:
        return parse_rules(text, max_stale=settings.cache_stale_ttl)
    except RulesError as exc:
        raise ConfigError([f"RULES_FILE={path}: {problem}" for problem in exc.problems]) from exc


def scaled_out_client(settings: Settings) -> tuple[Any, str]:
    """The client of a Redis Cluster (REDIS_CLUSTER_NODES) or of Sentinel's primary
    (REDIS_SENTINELS), and the label logs and /health show for it."""
    timeout, most = settings.redis_socket_timeout, settings.redis_max_connections
    password = settings.redis_password or None
    if settings.redis_cluster_nodes:
        label = "redis-cluster://" + ",".join(settings.redis_cluster_nodes)
        log.info("store: Redis Cluster, seeds %s", ",".join(settings.redis_cluster_nodes))
        try:
            return make_cluster_client(settings.redis_cluster_nodes, tls_ca=settings.redis_tls_ca,
                                       tls_cert=settings.redis_tls_cert,
                                       tls_key=settings.redis_tls_key, socket_timeout=timeout,
                                       max_connections=most, password=password), label
        except RedisClusterException as exc:  # not a RedisError: say it as one, for main()
            raise redis.ConnectionError(f"no Redis Cluster at {label}: {exc}") from exc
    label = f"redis-sentinel://{','.join(settings.redis_sentinels)}/{settings.redis_sentinel_master}"
    log.info("store: the primary of %r through Sentinel at %s", settings.redis_sentinel_master,
             ",".join(settings.redis_sentinels))
    return make_sentinel_client(settings.redis_sentinels, settings.redis_sentinel_master,
                                socket_timeout=timeout, max_connections=most,
                                password=password), label


def redis_url_of(settings: Settings) -> str:
    """REDIS_URL, else one built from REDIS_HOST/PORT/DB (TLS when TLS files are given). The
    password stays out of it: it goes to the client apart, so it can never be logged."""
    if settings.redis_url:
        return settings.redis_url
    host = f"[{settings.redis_host}]" if ":" in settings.redis_host else settings.redis_host
    tls = settings.redis_tls_ca or settings.redis_tls_cert
    return f"{'rediss' if tls else 'redis'}://{host}:{settings.redis_port}/{settings.redis_db}"
