"""Builds a RedisProxy from settings: Redis (configured or embedded), fetcher, L1 and policy."""

import logging
from typing import Any

import redis
from redis.exceptions import RedisClusterException

from freshness import Policy
from load_env import Settings, load_settings
from local_cache import LocalCache
from redis_connection import check_at_start, make_client, mask_url
from redis_launcher import RedisServer
from redis_proxy import RedisProxy
from redis_topology import make_cluster_client, make_sentinel_client
from upstream import Fetcher
from upstream_policy import UpstreamPolicy

log = logging.getLogger(__name__)


def redis_url_of(settings: Settings) -> str:
    """REDIS_URL, else one built from REDIS_HOST/PORT/DB (TLS when TLS files are given). The
    password stays out of it: it goes to the client apart, so it can never be logged."""
    if settings.redis_url:
        return settings.redis_url
    host = f"[{settings.redis_host}]" if ":" in settings.redis_host else settings.redis_host
    tls = settings.redis_tls_ca or settings.redis_tls_cert
    return f"{'rediss' if tls else 'redis'}://{host}:{settings.redis_port}/{settings.redis_db}"


def scaled_out_client(settings: Settings) -> tuple[Any, str]:
    """The client of a Redis Cluster (REDIS_CLUSTER_NODES) or of Sentinel's primary
    (REDIS_SENTINELS), and the label logs and /health show for it."""
    options = dict(socket_timeout=settings.redis_socket_timeout,
                   max_connections=settings.redis_max_connections,
                   password=settings.redis_password or None)
    if settings.redis_cluster_nodes:
        label = "redis-cluster://" + ",".join(settings.redis_cluster_nodes)
        log.info("store: Redis Cluster, seeds %s", ",".join(settings.redis_cluster_nodes))
        try:
            return make_cluster_client(settings.redis_cluster_nodes, tls_ca=settings.redis_tls_ca,
                                       tls_cert=settings.redis_tls_cert,
                                       tls_key=settings.redis_tls_key, **options), label
        except RedisClusterException as exc:  # not a RedisError: say it as one, for main()
            raise redis.ConnectionError(f"no Redis Cluster at {label}: {exc}") from exc
    label = f"redis-sentinel://{','.join(settings.redis_sentinels)}/{settings.redis_sentinel_master}"
    log.info("store: the primary of %r through Sentinel at %s", settings.redis_sentinel_master,
             ",".join(settings.redis_sentinels))
    return make_sentinel_client(settings.redis_sentinels, settings.redis_sentinel_master,
                                **options), label


def build_proxy(settings: Settings | None = None, **overrides: Any) -> RedisProxy:
    """The proxy for `settings`, starting an embedded redis-server when none is configured."""
    settings = settings or load_settings()
    on_close = []
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
    fetcher = Fetcher(timeout=settings.upstream_timeout, max_bytes=settings.upstream_max_bytes,
                      policy=UpstreamPolicy(allowed_hosts=settings.upstream_allowed_hosts,
                                            allowed_ports=settings.upstream_allowed_ports,
                                            allow_private=settings.upstream_allow_private))
    local = LocalCache(capacity=settings.cache_capacity, max_bytes=settings.cache_max_bytes,
                       ttl=settings.cache_ttl)
    policy = Policy(ttl=settings.cache_ttl, store_statuses=settings.cache_store_statuses,
                    store_set_cookie=settings.cache_store_set_cookie,
                    respect_cache_control=settings.respect_cache_control)
    proxy = RedisProxy(client, fetcher, local, ttl=settings.cache_ttl,
                       stale_ttl=settings.cache_stale_ttl, stale_if_error=settings.stale_if_error,
                       prefix=settings.cache_prefix, policy=policy,
                       max_url_bytes=settings.max_url_bytes, max_key_bytes=settings.max_key_bytes,
                       stale_while_revalidate=settings.stale_while_revalidate,
                       invalidation=settings.l1_invalidation,
                       redis_label=mask_url(url), on_close=on_close,
                       get_allow_cache_prefix=settings.get_allow_cache_prefix, **overrides)
    if check_at_start(client, mask_url(url)):
        proxy.configure_memory(settings.redis_maxmemory, settings.redis_eviction_policy)
    return proxy
