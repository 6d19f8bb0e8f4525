"""The settings' cross-checks: a value judged against another's (STALE_IF_ERROR within
CACHE_STALE_TTL, one way to reach Redis, TLS files with a rediss:// URL, ...) or against the
files it names, once each value has parsed alone. load_env.load_settings() runs them."""

import os
import re
from typing import Protocol
from urllib.parse import urlsplit


class CrossChecked(Protocol):
    """The settings the cross-checks read (load_env.Settings has them; this module sits below it)."""

    @property
    def redis_url(self) -> str: ...
    @property
    def redis_host(self) -> str: ...
    @property
    def redis_cluster_nodes(self) -> tuple[str, ...]: ...
    @property
    def redis_sentinels(self) -> tuple[str, ...]: ...
    @property
    def redis_sentinel_master(self) -> str: ...
    @property
    def redis_tls_ca(self) -> str: ...
    @property
    def redis_tls_cert(self) -> str: ...
    @property
    def redis_tls_key(self) -> str: ...
    @property
    def cache_stale_ttl(self) -> float: ...
    @property
    def stale_if_error(self) -> float: ...
    @property
    def auth_tokens_file(self) -> str: ...
    @property
    def origin_url(self) -> str: ...
    @property
    def origins(self) -> tuple[tuple[str, str], ...]: ...
    @property
    def public_host(self) -> str: ...


def cross_checks(settings: CrossChecked) -> list[str]:
    """What is wrong with the settings together, each value having parsed alone: one line per
    problem, naming the variables and what is expected."""
    problems = []
    if settings.stale_if_error > settings.cache_stale_ttl:
        problems.append(f"STALE_IF_ERROR={settings.stale_if_error:g}: expected at most "
                        f"CACHE_STALE_TTL ({settings.cache_stale_ttl:g})")
    if settings.redis_url and not re.match(r"(rediss?|unix)://", settings.redis_url):
        problems.append("REDIS_URL: expected a redis://, rediss:// or unix:// URL")
    elif settings.redis_url and not settings.redis_url.startswith("unix://"):
        problems.extend(_redis_url_problems(settings.redis_url))
    if settings.auth_tokens_file and not os.path.isfile(settings.auth_tokens_file):
        problems.append(f"AUTH_TOKENS_FILE={settings.auth_tokens_file!r}: expected a readable file")
    stores = [name for name, value in (("REDIS_URL or REDIS_HOST", settings.redis_url or settings.redis_host),
                                       ("REDIS_CLUSTER_NODES", settings.redis_cluster_nodes),
                                       ("REDIS_SENTINELS", settings.redis_sentinels)) if value]
    if len(stores) > 1:
        problems.append(f"{' and '.join(stores)}: expected only one way to reach Redis "
                        "(a URL, a cluster or Sentinel)")
    if settings.origins and settings.origin_url:
        problems.append("ORIGINS and ORIGIN_URL are both set: expected one of them (ORIGIN_URL "
                        "for one site whatever the Host, ORIGINS for a site per Host)")
    if settings.origins and settings.public_host:
        problems.append("ORIGINS and PUBLIC_HOST are both set: with ORIGINS each site's own Host "
                        "is sent as X-Forwarded-Host; leave PUBLIC_HOST empty")
    if settings.redis_sentinels and not settings.redis_sentinel_master.strip():
        problems.append("REDIS_SENTINELS is set: expected REDIS_SENTINEL_MASTER, the name the "
                        "sentinels monitor the primary under")
    if settings.redis_sentinel_master.strip() and not settings.redis_sentinels:
        problems.append("REDIS_SENTINEL_MASTER is set: expected REDIS_SENTINELS (host:port of the "
                        "sentinels) as well")
    for name in ("REDIS_TLS_CA", "REDIS_TLS_CERT", "REDIS_TLS_KEY"):
        path = getattr(settings, name.lower())
        if path and not os.path.isfile(path):
            problems.append(f"{name}={path!r}: expected a readable file")
    tls_files = settings.redis_tls_ca or settings.redis_tls_cert or settings.redis_tls_key
    if tls_files and settings.redis_url and not settings.redis_url.startswith("rediss://"):
        # Otherwise the files would be ignored and the connection silently left in clear text.
        problems.append("REDIS_TLS_CA/CERT/KEY are set: expected a rediss:// REDIS_URL")
    if tls_files and settings.redis_sentinels:
        problems.append("REDIS_TLS_CA/CERT/KEY are set: TLS through Sentinel is not supported; "
                        "use REDIS_URL or REDIS_CLUSTER_NODES")
    if bool(settings.redis_tls_cert) != bool(settings.redis_tls_key):
        problems.append("REDIS_TLS_CERT and REDIS_TLS_KEY: expected both (a client certificate "
                        "and its key) or neither")
    return problems


def _redis_url_problems(url: str) -> list[str]:
    """A redis:// URL's host and port, as redis-py would read them, checked at start rather
    than at the first connection (port 99999 would otherwise pass --check-config)."""
    try:
        port = urlsplit(url).port
    except ValueError:
        return ["REDIS_URL: expected a port from 1 to 65535 after the host"]
    if port == 0:
        return ["REDIS_URL: expected a port from 1 to 65535 after the host"]
    return []
