"""The upstream policy (issue 4): address blocks, URL forms, hosts, ports, and the connect-time
check. No test here sends traffic beyond loopback: names resolve through a fake DNS, addresses
outside loopback are only checked, and the network guard refuses anything else."""

import shutil
import ssl
import subprocess
import threading

import pytest

from net_guard import FakeDNS, OffLoopback, loopback_only, network_guard, rebinding  # noqa: F401
from proxy.errors import BadGateway, BadRequest, Forbidden
from proxy.upstream.fetcher import Fetcher
from proxy.upstream.policy import UpstreamPolicy, refused_block
from servers import Upstream

PUBLIC_V4 = "93.184.216.34"


pytestmark = pytest.mark.usefixtures("loopback_only")


def policy(**options) -> UpstreamPolicy:
    options.setdefault("resolver", FakeDNS({"public.test": [PUBLIC_V4],
                                            "v6.test": ["2606:4700::1111"]}))
    return UpstreamPolicy(**options)


# ----- the address check: checked only, never connected --------------------------------------

@pytest.mark.parametrize("address, block", [
    ("0.1.2.3", "0.0.0.0/8"), ("10.1.2.3", "10.0.0.0/8"), ("100.64.0.1", "100.64.0.0/10"),
    ("100.127.255.254", "100.64.0.0/10"), ("127.0.0.1", "127.0.0.0/8"),
    ("127.255.255.254", "127.0.0.0/8"), ("169.254.169.254", "169.254.0.0/16"),
    ("172.16.0.1", "172.16.0.0/12"), ("172.31.255.255", "172.16.0.0/12"),
    ("192.0.0.8", "192.0.0.0/24"), ("192.0.2.1", "192.0.2.0/24"),
    ("192.88.99.1", "192.88.99.0/24"), ("192.168.1.1", "192.168.0.0/16"),
    ("198.18.0.1", "198.18.0.0/15"), ("198.19.255.255", "198.18.0.0/15"),
    ("198.51.100.7", "198.51.100.0/24"), ("203.0.113.9", "203.0.113.0/24"),
    ("224.0.0.1", "224.0.0.0/4"), ("239.255.255.250", "224.0.0.0/4"),
    ("240.0.0.1", "240.0.0.0/4"), ("255.255.255.255", "240.0.0.0/4"),
    ("::", "::/128"), ("::1", "::1/128"),
    ("::ffff:10.0.0.1", "::ffff:0:0/96"), ("::ffff:127.0.0.1", "::ffff:0:0/96"),
    ("::ffff:93.184.216.34", "::ffff:0:0/96"),  # mapped is refused whatever it embeds
    ("::127.0.0.1", "::/96"), ("64:ff9b::7f00:1", "64:ff9b::/96"),
    ("64:ff9b::5db8:d822", "64:ff9b::/96"), ("64:ff9b:1::a00:1", "64:ff9b:1::/48"),
    ("100::1", "100::/64"), ("2001::1", "2001::/32"), ("2001:0:4136:e378::1", "2001::/32"),
    ("2001:2::1", "2001:2::/48"), ("2001:db8::1", "2001:db8::/32"),
    ("2002:7f00:1::", "2002::/16"), ("2002:5db8:d822::1", "2002::/16"),
    ("3fff::1", "3fff::/20"), ("5f00::1", "5f00::/16"), ("fc00::1", "fc00::/7"),
    ("fd00::1", "fc00::/7"), ("fe80::1", "fe80::/10"), ("fe80::1%eth0", "fe80::/10"),
    ("fec0::1", "fec0::/10"), ("ff02::1", "ff00::/8"), ("ff0e::1", "ff00::/8"),
])
def test_every_refused_block_is_refused(address, block):
    under_test = policy()
    with pytest.raises(Forbidden) as refused:
        under_test.check_address(address)
    assert refused.value.status == 403 and block in refused.value.detail
    assert under_test.refusal_counts() == {"address": 1}


@pytest.mark.parametrize("address, inner", [
    ("::ffff:127.0.0.1", "127.0.0.1"), ("64:ff9b::7f00:1", "127.0.0.1"),
    ("2002:7f00:1::", "127.0.0.1"), ("::ffff:169.254.169.254", "169.254.169.254"),
])
def test_a_refusal_names_the_embedded_ipv4_address(address, inner):
    assert f"embedding {inner}" in refused_block(address)


@pytest.mark.parametrize("address", [
    PUBLIC_V4, "8.8.8.8", "1.1.1.1", "100.63.255.255", "100.128.0.1", "172.15.255.255",
    "172.32.0.1", "192.0.1.1", "192.0.3.1", "198.17.255.255", "198.20.0.1", "223.255.255.255",
    "2606:4700::1111", "2a00:1450:4001::200e", "2001:4860:4860::8888", "2003::1",
])
def test_public_addresses_are_accepted(address):
    under_test = policy()
    under_test.check_address(address)
    assert refused_block(address) is None and under_test.refusal_counts() == {}


def test_outside_global_unicast_is_refused_even_when_no_block_names_it():
    assert "2000::/3" in refused_block("4000::1")
    assert "not an IP address" in refused_block("not-an-ip")


def test_allow_private_lifts_the_address_check_only():
    lifted = policy(allow_private=True)
    lifted.check_address("127.0.0.1")
    lifted.check_address("169.254.169.254")
    assert lifted.check_url("http://localhost/x") == "http://localhost/x"
    for url in ("file:///etc/passwd", "http://user@localhost/", "http://localhost:22/",
                "http://2130706433/"):
        with pytest.raises(Forbidden):
            lifted.check_url(url)


# ----- URL forms ----------------------------------------------------------------------------------

@pytest.mark.parametrize("url", ["ftp://public.test/", "file:///etc/passwd", "gopher://public.test/",
                                 "dict://public.test:11211/", "javascript:alert(1)"])
def test_only_http_and_https_are_fetched(url):
    under_test = policy()
    with pytest.raises(Forbidden, match="scheme"):
        under_test.check_url(url)
    assert under_test.refusal_counts() == {"scheme": 1}


@pytest.mark.parametrize("url", ["http://user:pass@public.test/", "http://user@public.test/",
                                 "http://@public.test/", "http://:@public.test/",
                                 "http://public.test\\@127.0.0.1/",
                                 "http://127.0.0.1:80\\@public.test/"])
def test_user_info_is_refused(url):
    with pytest.raises(Forbidden, match="user info"):
        policy(allow_private=True).check_url(url)


@pytest.mark.parametrize("host", ["2130706433", "0x7f.1", "017700000001", "127.1", "0177.0.0.1",
                                  "0x7f000001", "127.000.000.001", "0x7f.0.0.1", "127.0.1",
                                  "1.2.3.4.5", "93.184.55330", "0x", "0177.0.0.1."])
def test_numeric_ipv4_forms_are_refused_whatever_they_point_at(host):
    dns = FakeDNS()
    under_test = policy(resolver=dns, allow_private=True)
    with pytest.raises(Forbidden, match="numeric form") as refused:
        under_test.check_url(f"http://{host}/")
    assert refused.value.status == 403 and dns.asked == []
    assert under_test.refusal_counts() == {"ip_literal": 1}


def test_canonical_literals_are_checked_as_addresses():
    under_test = policy()
    assert under_test.check_url(f"http://{PUBLIC_V4}/a") == f"http://{PUBLIC_V4}/a"
    assert under_test.check_url(f"http://{PUBLIC_V4}.:8080/a") == f"http://{PUBLIC_V4}:8080/a"
    assert under_test.check_url("http://[2606:4700:0::1111]/") == "http://[2606:4700::1111]/"
    for url in ("http://127.0.0.1/", "http://[::1]/", "http://[::ffff:127.0.0.1]/",
                "http://0.0.0.0/", "http://[::]/", "http://169.254.169.254/latest/meta-data/"):
        with pytest.raises(Forbidden, match="address refused"):
            under_test.check_url(url)


@pytest.mark.parametrize("url", ["http://localhost/", "http://localhost./", "http://LocalHost/",
                                 "http://api.localhost/"])
def test_localhost_names_are_loopback_without_asking_dns(url):
    dns = FakeDNS({"localhost": [PUBLIC_V4]})  # even if DNS lied
    with pytest.raises(Forbidden, match="loopback") as refused:
        policy(resolver=dns).check_url(url)
    assert dns.asked == []
    # The refusal names the setting that lifts it, as the address refusal does.
    assert refused.value.detail.endswith("only public addresses are fetched (UPSTREAM_ALLOW_PRIVATE=true "
                                         "lifts this for internal upstreams)")


def test_a_trailing_dot_is_kept_for_dns_and_dropped_for_the_rules():
    dns = FakeDNS({"public.test": [PUBLIC_V4]})
    under_test = policy(resolver=dns, allowed_hosts=("public.test",))
    assert under_test.check_url("http://Public.Test./p?q=1#frag") == "http://public.test./p?q=1"
    assert dns.asked == ["public.test."]


def test_hosts_are_idna_normalised():
    dns = FakeDNS({"example.com": [PUBLIC_V4], "xn--bcher-kva.example": [PUBLIC_V4]})
    under_test = policy(resolver=dns)
    assert under_test.check_url("http://ExAmPle.COM/Path") == "http://example.com/Path"
    assert under_test.check_url("http://BÜCHER.example/") == "http://xn--bcher-kva.example/"
    assert under_test.check_url("http://ex\u00adample.com/") == "http://example.com/"
    with pytest.raises(Forbidden, match="address refused"):  # full-width digits map to 127.0.0.1
        under_test.check_url("http://\uff11\uff12\uff17.\uff10.\uff10.\uff11/")


@pytest.mark.parametrize("host, why", [("☃.example", "IDNA"), ("a\u200db.example", "IDNA"),
                                       ("xn--zz.example", "A-label"), ("a%2eb.example", "host name"),
                                       ("a b.example", "host name"), ("a..example", "host name")])
def test_an_invalid_host_is_a_bad_request_with_a_clear_detail(host, why):
    with pytest.raises(BadRequest, match=why) as bad:
        policy().check_url(f"http://{host}/")
    assert bad.value.status == 400 and bad.value.error == "bad url"


def test_ports_are_limited():
    under_test = policy(allow_private=True, allowed_ports=(80, 443))
    assert under_test.check_url("https://public.test/") == "https://public.test/"
    for url in ("http://public.test:22/", "http://public.test:6379/", "http://public.test:0/",
                "https://public.test:80/x".replace(":80", ":8443")):
        with pytest.raises(Forbidden, match="port"):
            under_test.check_url(url)
    assert under_test.refusal_counts() == {"port": 4}


@pytest.mark.parametrize("host, allowed", [
    ("api.example.com", True), ("API.Example.COM.", True), ("x.example.org", True),
    ("a.b.example.org", True), ("example.org", False), ("evilexample.org", False),
    ("example.org.evil.test", False), ("other.test", False), ("xn--bcher-kva.example", True),
])
def test_allowed_hosts_are_exact_names_and_suffixes(host, allowed):
    dns = FakeDNS({name: [PUBLIC_V4] for name in ("api.example.com", "x.example.org",
                                                  "a.b.example.org", "example.org",
                                                  "evilexample.org", "example.org.evil.test",
                                                  "other.test", "xn--bcher-kva.example")})
    under_test = policy(resolver=dns, allow_private=True,
                        allowed_hosts=("api.example.com", "*.Example.org", "bücher.example"))
    if allowed:
        under_test.check_url(f"http://{host}/")
    else:
        with pytest.raises(Forbidden, match="UPSTREAM_ALLOWED_HOSTS"):
            under_test.check_url(f"http://{host}/")


def test_every_resolved_address_is_checked():
    dns = FakeDNS({"mixed.test": [PUBLIC_V4, "10.0.0.1"], "both.test": [PUBLIC_V4, "2606:4700::1111"],
                   "meta.test": ["169.254.169.254"], "v6only.test": ["fd00::1"]})
    under_test = policy(resolver=dns)
    assert under_test.check_url("http://both.test/") == "http://both.test/"
    for name in ("mixed.test", "meta.test", "v6only.test"):
        with pytest.raises(Forbidden, match=f"{name} resolves to it"):
            under_test.check_url(f"http://{name}/")
    assert under_test.refusal_counts() == {"address": 3}


def test_an_unresolvable_name_passes_the_check_and_fails_at_connect():
    assert policy().check_url("http://nowhere.test/") == "http://nowhere.test/"


def test_without_resolving_literals_are_still_checked_and_names_are_not_looked_up():
    dns = FakeDNS({"meta.test": ["169.254.169.254"]})
    under_test = policy(resolver=dns)
    assert under_test.check_url("http://meta.test/", resolve=False) == "http://meta.test/"
    assert dns.asked == []
    for url in ("http://169.254.169.254/", "http://0x7f.1/", "http://u@meta.test/",
                "http://meta.test:22/"):
        with pytest.raises(Forbidden):
            under_test.check_url(url, resolve=False)


def test_refusals_are_counted_safely_from_many_threads():
    under_test = policy()

    def refuse_many():
        for _ in range(200):
            with pytest.raises(Forbidden):
                under_test.check_url("http://127.0.0.1/")

    threads = [threading.Thread(target=refuse_many) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert under_test.refusal_counts() == {"address": 1600}


def test_the_guard_refuses_before_connecting():
    # The hook is called with what socket.connect would get; nothing is opened here.
    class FakeSocket:
        family = 2  # AF_INET

    with pytest.raises(OffLoopback):
        network_guard().hook("socket.connect", (FakeSocket(), ("192.0.2.1", 80)))
    network_guard().violations.clear()
    network_guard().hook("socket.connect", (FakeSocket(), ("127.0.0.1", 80)))


# ----- the connect-time check, against a loopback upstream --------------------------------------

@pytest.fixture
def upstream():
    server = Upstream().start()
    server.serve("/secret", b"internal only")
    yield server
    server.stop()


def test_a_name_resolving_to_a_refused_address_is_refused_before_connecting(upstream):
    dns = FakeDNS({"internal.test": ["127.0.0.1"]})
    fetcher = Fetcher(timeout=5, policy=policy(resolver=dns, allowed_ports=(upstream.port,)))
    try:
        with pytest.raises(Forbidden, match="internal.test resolves to it"):
            fetcher.fetch(f"http://internal.test:{upstream.port}/secret")
    finally:
        fetcher.close()
    assert dns.asked == ["internal.test"]
    assert upstream.hits["/secret"] == 0
    assert fetcher.policy.refusal_counts() == {"address": 1}


def test_a_rebinding_name_is_looked_up_once_and_connected_at_that_answer(upstream):
    # DNS rebinding: a second lookup would answer 127.0.0.2, where nothing listens on this
    # port; the fetch makes one lookup and connects only to the address it answered.
    dns = FakeDNS({"rebind.test": rebinding(["127.0.0.1"], ["127.0.0.2"])})
    fetcher = Fetcher(timeout=5, policy=policy(resolver=dns, allow_private=True,
                                               allowed_ports=(upstream.port,)))
    try:
        response = fetcher.fetch(f"http://rebind.test:{upstream.port}/secret")
    finally:
        fetcher.close()
    assert (response.status, response.body) == (200, b"internal only")
    assert upstream.requests[0][1]["Host"] == f"rebind.test:{upstream.port}"  # the name, not the address
    assert dns.asked == ["rebind.test"] and upstream.hits["/secret"] == 1


def test_an_unresolvable_name_is_a_bad_gateway(upstream):
    fetcher = Fetcher(timeout=5, policy=policy(allowed_ports=(upstream.port,)))
    try:
        with pytest.raises(BadGateway, match=r"^could not resolve nowhere\.test \("):
            fetcher.fetch(f"http://nowhere.test:{upstream.port}/")
    finally:
        fetcher.close()


def _certificate(tmp_path, name: str):
    cert, key = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj", f"/CN={name}",
                    "-addext", f"subjectAltName=DNS:{name}", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=30)
    return cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command for a cert")
@pytest.mark.parametrize("cert_name, status", [("tls.test", 200), ("other.test", None)])
def test_https_keeps_sni_and_verifies_the_certificate_for_the_name(tmp_path, cert_name, status):
    cert, key = _certificate(tmp_path, cert_name)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    seen_sni = []
    context.sni_callback = lambda _sock, name, _ctx: seen_sni.append(name)
    server = Upstream()
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.serve("/tls", b"over tls")
    server.start()
    dns = FakeDNS({"tls.test": ["127.0.0.1"]})
    fetcher = Fetcher(timeout=5, policy=policy(resolver=dns, allow_private=True,
                                               allowed_ports=(server.port,)))
    fetcher.session.verify = str(cert)
    try:
        if status is None:
            with pytest.raises(BadGateway):
                fetcher.fetch(f"https://tls.test:{server.port}/tls")
        else:
            assert fetcher.fetch(f"https://tls.test:{server.port}/tls").body == b"over tls"
    finally:
        fetcher.close()
        server.stop()
    assert seen_sni[:1] == ["tls.test"]
    assert server.hits["/tls"] == (1 if status else 0)
