"""Upstream name resolution (issue 8): one lookup per fetch hop, bounded by UPSTREAM_TIMEOUT.

Names resolve through a resolver injected into the policy (never the system's: the network
guard refuses that), to real upstreams on loopback; the proxy runs on port 0."""

import threading
import time

import pytest

from net_guard import FakeDNS, loopback_only  # noqa: F401
from proxy.errors import GatewayTimeout
from proxy.upstream.fetcher import Fetcher
from proxy.upstream.policy import MAX_LOOKUPS, UpstreamPolicy
from servers import q, request, wait_until

pytestmark = pytest.mark.usefixtures("loopback_only")


class SlowDNS(FakeDNS):
    """A resolver that answers only once `release` is set (or after `hang` seconds)."""

    def __init__(self, names: dict[str, list[str]], hang: float = 10.0):
        super().__init__(names)
        self.release = threading.Event()
        self.hang = hang

    def __call__(self, host: str, port: int) -> list[str]:
        with self._lock:
            self.asked.append(host)
        self.release.wait(self.hang)
        return list(self.names[host.rstrip(".")])


def lookups_running(host: str) -> int:
    return sum(1 for thread in threading.enumerate() if thread.name == f"resolve {host}")


def test_one_fetch_of_a_name_makes_one_lookup(upstream, make_proxy, r):
    upstream.serve("/page", b"named page")
    dns = FakeDNS({"name.test": ["127.0.0.1"]})
    proxy = make_proxy(upstream_policy=UpstreamPolicy(allow_private=True, resolver=dns,
                                                      allowed_ports=(upstream.port,)))

    got = request(proxy.port, q(f"http://name.test:{upstream.port}/page", "named"))

    assert (got.status, got.body) == (200, b"named page")
    assert dns.asked == ["name.test"]
    assert upstream.hits["/page"] == 1 and r.exists("rp:named") == 1


def test_each_redirect_hop_makes_one_lookup_of_its_own_name(upstream, make_proxy):
    upstream.serve("/hop", b"", status=302,
                   headers={"Location": f"http://other.test:{upstream.port}/page"})
    upstream.serve("/page", b"landed")
    dns = FakeDNS({"name.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
    proxy = make_proxy(upstream_policy=UpstreamPolicy(allow_private=True, resolver=dns,
                                                      allowed_ports=(upstream.port,)))

    got = request(proxy.port, q(f"http://name.test:{upstream.port}/hop", "hop"))

    assert (got.status, got.body) == (200, b"landed")
    assert dns.asked == ["name.test", "other.test"]
    assert upstream.requests[-1][1]["Host"] == f"other.test:{upstream.port}"


def test_a_slow_resolver_gives_504_within_the_upstream_timeout(upstream, make_proxy, r):
    upstream.serve("/page", b"never fetched")
    dns = SlowDNS({"slow.test": ["127.0.0.1"]})
    proxy = make_proxy(timeout=0.5, upstream_policy=UpstreamPolicy(
        allow_private=True, resolver=dns, allowed_ports=(upstream.port,)))
    try:
        started = time.monotonic()
        got = request(proxy.port, q(f"http://slow.test:{upstream.port}/page", "slow"), timeout=5)
        elapsed = time.monotonic() - started

        assert got.status == 504, got
        assert got.json() == {"error": "upstream timeout",
                              "detail": "timed out after 0.5 s resolving slow.test"}
        assert elapsed < 0.5 + 1.0  # the timeout, plus slack for a loaded machine
        assert dns.asked == ["slow.test"]
        assert upstream.hits["/page"] == 0 and r.exists("rp:slow") == 0
        assert request(proxy.port, "/health").status == 200  # still serving
    finally:
        dns.release.set()


def test_hung_lookups_tie_up_at_most_8_threads_and_free_them_when_answered(upstream):
    assert MAX_LOOKUPS == 8  # the README states it
    upstream.serve("/page", b"after the hang")
    dns = SlowDNS({"hung.test": ["127.0.0.1"]})
    policy = UpstreamPolicy(allow_private=True, resolver=dns, allowed_ports=(upstream.port,))
    fetcher = Fetcher(timeout=0.2, policy=policy)
    url = f"http://hung.test:{upstream.port}/page"
    try:
        for _ in range(MAX_LOOKUPS + 1):
            with pytest.raises(GatewayTimeout, match="timed out after 0.2 s resolving hung.test"):
                fetcher.fetch(url)
        # Eight hung lookups hold every slot; the ninth fetch timed out waiting for one.
        assert len(dns.asked) == MAX_LOOKUPS and lookups_running("hung.test") == MAX_LOOKUPS
        dns.release.set()
        wait_until(lambda: lookups_running("hung.test") == 0)
        response = fetcher.fetch(url)
    finally:
        dns.release.set()
        fetcher.close()
    assert (response.status, response.body) == (200, b"after the hang")
    assert len(dns.asked) == MAX_LOOKUPS + 1 and upstream.hits["/page"] == 1


def test_a_lookup_that_fails_is_a_bad_gateway_after_one_lookup(upstream, make_proxy, r):
    dns = FakeDNS({})
    proxy = make_proxy(upstream_policy=UpstreamPolicy(allow_private=True, resolver=dns,
                                                      allowed_ports=(upstream.port,)))

    got = request(proxy.port, q(f"http://nowhere.test:{upstream.port}/page", "nowhere"))

    assert got.status == 502 and got.json() == {
        "error": "bad gateway",
        "detail": "could not resolve nowhere.test (nowhere.test not known to the fake DNS)"}
    assert dns.asked == ["nowhere.test"] and r.exists("rp:nowhere") == 0

