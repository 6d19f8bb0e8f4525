"""Fixtures: a real redis-server, a counting upstream, and the proxy on port 0."""

import dataclasses
import os
import sys

import pytest
import redis

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "tests"))

from http_server import make_server  # noqa: E402
from proxy.cache.freshness import Policy  # noqa: E402
from proxy.cache.local_cache import LocalCache  # noqa: E402
from proxy.resp import server as resp_server  # noqa: E402
from proxy.store.connection import make_client  # noqa: E402
from proxy.store.launcher import RedisServer  # noqa: E402
from proxy.upstream.fetcher import Fetcher  # noqa: E402
from proxy.upstream.policy import UpstreamPolicy  # noqa: E402
from redis_proxy import RedisProxy  # noqa: E402
from servers import Origin, ServerThread, Upstream  # noqa: E402


def pytest_configure(config):
    # HTTP_WORKERS defaults to one per core: a proxy process a test starts runs one worker
    # unless the test asks for more (in the environment it gives the process).
    os.environ["HTTP_WORKERS"] = "1"


@pytest.fixture(scope="session")
def redis_server():
    """One real redis-server for the session, on a unix socket in a temp dir."""
    with RedisServer(unix_socket=True) as server:
        yield server


# What a proxy built from settings sets on its Redis at start (RedisProxy.configure_memory).
SHARED_CONFIG = ("maxmemory", "maxmemory-policy")


@pytest.fixture
def redis_url(redis_server):
    """The session's Redis, emptied; its CONFIG is put back afterwards, whatever the test (or a
    proxy process it started) set, so that no test sees another's memory limit."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    before = {name: client.config_get(name)[name] for name in SHARED_CONFIG}
    try:
        yield redis_server.url
    finally:
        for name, value in before.items():
            client.config_set(name, value)
        client.close()


@pytest.fixture
def r(redis_url):
    """A plain client of the test's Redis, for looking behind the proxy's back."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def upstream():
    server = Upstream().start()
    yield server
    server.stop()


@pytest.fixture
def origin():
    """A scripted origin on 127.0.0.1:0 for reverse-proxy mode (servers.Origin)."""
    server = Origin().start()
    yield server
    server.stop()


@dataclasses.dataclass
class ProxyUnderTest:
    proxy: RedisProxy
    thread: ServerThread

    @property
    def port(self) -> int:
        return self.thread.port


@pytest.fixture
def make_proxy(redis_url):
    """Build a proxy on the test Redis with the given options, served on port 0."""
    started = []

    def build(url: str | None = None, *, ttl: float = 3600.0, stale_ttl: float = 0.0,
              stale_if_error: float = 0.0, timeout: float = 5.0, max_bytes: int = 1 << 20,
              capacity: int = 1024, server_options: dict | None = None,
              policy: Policy | None = None, clock=None, local_timer=None,
              invalidation: str = "tracking", upstream_policy: UpstreamPolicy | None = None,
              allow_private: bool = True, fetcher_options: dict | None = None,
              **proxy_options) -> ProxyUnderTest:
        """`allow_private=False`: the strict upstream policy a deployment has by default;
        `upstream_policy` replaces the policy altogether; `fetcher_options`: more of Fetcher's
        (`max_fetches`, `fetch_wait`)."""
        client = make_client(url or redis_url)
        # By default the test upstreams on loopback are allowed; pass `upstream_policy` to test
        # the policy itself.
        fetcher = Fetcher(timeout=timeout, max_bytes=max_bytes,
                          policy=upstream_policy or UpstreamPolicy(
                              allow_private=allow_private, allowed_ports=tuple(range(1, 65536))),
                          **(fetcher_options or {}))
        options = dict(ttl=ttl, stale_ttl=stale_ttl, stale_if_error=stale_if_error,
                       policy=policy or Policy(ttl=ttl), invalidation=invalidation, **proxy_options)
        if clock is not None:
            options["clock"] = clock
        local = LocalCache(capacity=capacity, ttl=ttl, **({"timer": local_timer} if local_timer else {}))
        proxy = RedisProxy(client, fetcher, local, **options)
        server = make_server("127.0.0.1", 0, proxy, **(server_options or {}))
        under_test = ProxyUnderTest(proxy, ServerThread(server).start())
        started.append(under_test)
        return under_test

    yield build
    for under_test in started:
        under_test.thread.stop()
        under_test.proxy.close()


@pytest.fixture
def make_resp_proxy(make_proxy):
    """Like make_proxy, plus the same proxy served over RESP on port 0 (`.port` is RESP's)."""
    started = []

    def build(*args, resp_options: dict | None = None, **options) -> ProxyUnderTest:
        under_test = make_proxy(*args, **options)
        server = resp_server.make_server("127.0.0.1", 0, under_test.proxy, **(resp_options or {}))
        thread = ServerThread(server).start()
        started.append(thread)
        return ProxyUnderTest(under_test.proxy, thread)

    yield build
    for thread in started:
        thread.stop()
