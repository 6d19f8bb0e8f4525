"""SSRF end to end (issue 4): the proxy on port 0 with the real policy (private addresses
refused), a loopback upstream standing in for an internal target that must never be hit, and
a second loopback upstream reached as `allowed.test` through a fake DNS and one narrow
exemption, standing in for a public origin. Traffic stays on loopback (net_guard)."""

import collections
import socket
import threading
from http.server import ThreadingHTTPServer

import pytest

from net_guard import FakeDNS, is_loopback_literal, loopback_only  # noqa: F401 - a fixture
from proxy.upstream.policy import DEFAULT_PORTS, UpstreamPolicy
from servers import Upstream, UpstreamHandler, q, request


class ExemptingPolicy(UpstreamPolicy):
    """The real policy, except that the (name, port) pairs in `exempt` may resolve to loopback:
    how a test reaches a local stand-in for a public origin without lifting the check for
    any other name, address or port."""

    def __init__(self, exempt: set[tuple[str, int]], **options):
        super().__init__(**options)
        self.exempt = frozenset(exempt)

    def check_connect(self, host: str, port: int, timeout: float | None = None) -> list[str]:
        if (host.rstrip("."), port) in self.exempt:
            addresses = self.resolve(host, port, timeout)
            assert all(is_loopback_literal(a) for a in addresses)
            return addresses
        return super().check_connect(host, port, timeout)


class Upstream6(Upstream):
    """The counting upstream on [::1]."""

    address_family = socket.AF_INET6

    def __init__(self) -> None:  # noqa: D107 - Upstream's, on ::1
        ThreadingHTTPServer.__init__(self, ("::1", 0), UpstreamHandler)
        self.lock = threading.Lock()
        self.hits = collections.Counter()
        self.requests = []
        self.routes = {}
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)


pytestmark = pytest.mark.usefixtures("loopback_only")


@pytest.fixture
def site(make_proxy):
    """internal: the target an attacker aims at; good: `allowed.test`; stray: a port not allowed."""
    internal, good, stray = Upstream().start(), Upstream().start(), Upstream().start()
    internal.serve("/secret", b"internal only")
    good.serve("/good", b"public page")
    stray.serve("/secret", b"stray")
    dns = FakeDNS({"allowed.test": ["127.0.0.1"], "xn--bcher-kva.example": ["127.0.0.1"],
                   "localhost": ["127.0.0.1"],
                   "internal.test": ["127.0.0.1"]})
    policy = ExemptingPolicy({("allowed.test", good.port), ("xn--bcher-kva.example", good.port)},
                             allowed_ports=DEFAULT_PORTS + (internal.port, good.port),
                             resolver=dns)
    proxy = make_proxy(upstream_policy=policy)
    yield type("Site", (), dict(internal=internal, good=good, stray=stray, dns=dns,
                                policy=policy, proxy=proxy))
    for server in (internal, good, stray):
        server.stop()


def assert_refused(got, status: int, reason: str) -> None:
    assert got.status == status, got
    doc = got.json()
    assert doc["error"] == ("url refused" if status == 403 else "bad url")
    assert reason in doc["detail"], doc


SSRF_FORMS = [
    ("http://127.0.0.1:{internal}/secret", 403, "127.0.0.0/8"),
    ("http://127.0.0.2:{internal}/secret", 403, "127.0.0.0/8"),
    ("http://localhost:{internal}/secret", 403, "loopback"),
    ("http://localhost.:{internal}/secret", 403, "loopback"),
    ("http://LocalHost:{internal}/secret", 403, "loopback"),
    ("http://2130706433:{internal}/secret", 403, "numeric form"),
    ("http://0x7f.1:{internal}/secret", 403, "numeric form"),
    ("http://017700000001:{internal}/secret", 403, "numeric form"),
    ("http://0177.0.0.1:{internal}/secret", 403, "numeric form"),
    ("http://127.1:{internal}/secret", 403, "numeric form"),
    ("http://0x7f000001:{internal}/secret", 403, "numeric form"),
    ("http://[::ffff:127.0.0.1]:{internal}/secret", 403, "::ffff:0:0/96"),
    ("http://[::ffff:7f00:1]:{internal}/secret", 403, "embedding 127.0.0.1"),
    ("http://0.0.0.0:{internal}/secret", 403, "0.0.0.0/8"),
    ("http://[::]:{internal}/secret", 403, "::/128"),
    ("http://\uff11\uff12\uff17.\uff10.\uff10.\uff11:{internal}/secret", 403, "127.0.0.0/8"),
    ("http://user@127.0.0.1:{internal}/secret", 403, "user info"),
    ("http://user:pw@allowed.test:{good}/good", 403, "user info"),
    ("http://@allowed.test:{good}/good", 403, "user info"),
    ("http://169.254.169.254/latest/meta-data/", 403, "169.254.0.0/16"),
    ("http://allowed.test:{stray}/secret", 403, "port"),
    ("http://%31%32%37.0.0.1:{internal}/secret", 400, "not a valid host name"),
    ("file:///etc/passwd", 400, "http"),
    ("gopher://127.0.0.1:{internal}/_secret", 400, "http"),
]


def test_every_ssrf_form_is_refused_and_a_good_request_still_succeeds(site, r):
    ports = dict(internal=site.internal.port, good=site.good.port, stray=site.stray.port)
    forbidden = 0
    for i, (template, status, reason) in enumerate(SSRF_FORMS):
        got = request(site.proxy.port, q(template.format(**ports), f"ssrf-{i}"))
        assert_refused(got, status, reason)
        forbidden += status == 403
        assert r.exists(f"rp:ssrf-{i}") == 0
        good = request(site.proxy.port, q(f"http://allowed.test:{site.good.port}/good?n={i}"))
        assert (good.status, good.body) == (200, b"public page"), (template, good)
        assert site.good.hits["/good"] == i + 1
    assert sum(site.internal.hits.values()) == 0 and sum(site.stray.hits.values()) == 0
    assert sum(site.policy.refusal_counts().values()) == forbidden
    assert [k for k in r.keys("*") if b"ssrf" in k] == []


def test_ipv6_loopback_is_refused(site, r):
    try:
        internal6 = Upstream6().start()
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    try:
        internal6.serve("/secret", b"internal only")
        site.policy.allowed_ports |= {internal6.port}  # so the address check is what refuses
        got = request(site.proxy.port, q(f"http://[::1]:{internal6.port}/secret", "ssrf6"))
        assert_refused(got, 403, "::1/128")
        assert internal6.hits["/secret"] == 0 and r.exists("rp:ssrf6") == 0
    finally:
        internal6.stop()


def test_a_name_resolving_to_loopback_is_refused_after_one_lookup(site, r):
    # One lookup per hop, and the connection goes only to what it answered and the policy
    # checked: a second lookup that could answer differently (DNS rebinding) is never made.
    url = f"http://internal.test:{site.internal.port}/secret"
    got = request(site.proxy.port, q(url, "internal"))
    assert_refused(got, 403, "internal.test resolves to it")
    assert site.dns.asked == ["internal.test"]
    assert site.internal.hits["/secret"] == 0 and r.exists("rp:internal") == 0


REDIRECT_TARGETS = [
    ("http://127.0.0.1:{internal}/secret", 403, "127.0.0.0/8"),
    ("http://169.254.169.254/latest/meta-data/", 403, "169.254.0.0/16"),
    ("http://[::ffff:7f00:1]:{internal}/secret", 403, "::ffff:0:0/96"),
    ("http://0x7f.1:{internal}/secret", 403, "numeric form"),
    ("http://localhost:{internal}/secret", 403, "loopback"),
    ("http://internal.test:{internal}/secret", 403, "internal.test resolves to it"),
    ("http://user@allowed.test:{good}/good", 403, "user info"),
    ("http://allowed.test:{stray}/secret", 403, "port"),
    ("file:///etc/passwd", 403, "scheme"),
    ("gopher://127.0.0.1:{internal}/_secret", 403, "scheme"),
    ("http://xn--zz.example/", 502, "A-label"),
]


@pytest.mark.parametrize("target, status, reason", REDIRECT_TARGETS)
def test_a_redirect_hop_is_checked_like_the_first(site, r, target, status, reason):
    ports = dict(internal=site.internal.port, good=site.good.port, stray=site.stray.port)
    site.good.serve("/hop", b"", status=302, headers={"Location": target.format(**ports)})
    got = request(site.proxy.port, q(f"http://allowed.test:{site.good.port}/hop", "hop"))
    assert got.status == status, got
    assert reason in got.json()["detail"]
    assert site.good.hits["/hop"] == 1
    assert sum(site.internal.hits.values()) == 0 and sum(site.stray.hits.values()) == 0
    assert site.good.hits["/good"] == 0 and r.exists("rp:hop") == 0


def test_a_redirect_within_the_allowed_origin_is_followed(site):
    site.good.serve("/hop", b"", status=302, headers={"Location": "/good"})
    got = request(site.proxy.port, q(f"http://allowed.test:{site.good.port}/hop"))
    assert (got.status, got.body) == (200, b"public page")
    assert site.policy.refusal_counts() == {}


def test_hosts_are_idna_normalised_on_the_wire(site):
    for host, wire in (("Allowed.TEST", "allowed.test"), ("BÜCHER.example", "xn--bcher-kva.example")):
        got = request(site.proxy.port, q(f"http://{host}:{site.good.port}/good", host))
        assert (got.status, got.body) == (200, b"public page")
        assert site.good.requests[-1][1]["Host"] == f"{wire}:{site.good.port}"
    got = request(site.proxy.port, q("http://\u2603.example/"))
    assert_refused(got, 400, "IDNA")


def test_an_entry_stored_under_a_looser_policy_is_not_served_under_a_stricter_one(site, r,
                                                                                   make_proxy):
    loose = make_proxy()  # the suite's default: private addresses allowed
    url = site.internal.url("/secret")
    assert request(loose.port, q(url, "loose")).body == b"internal only"
    assert r.exists("rp:loose") == 1
    got = request(site.proxy.port, q(url, "loose"))  # same Redis, the strict policy
    assert_refused(got, 403, "127.0.0.0/8")
    assert site.internal.hits["/secret"] == 1 and site.dns.asked == []
