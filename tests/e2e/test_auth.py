"""HTTP authentication (CONTRACT §4): bearer tokens, checked first, /health left open."""

import hmac
import logging

import pytest

from http_server import authenticator_of
from load_env import load_settings
from proxy.errors import ConfigError, TooManyRequests, Unauthorized
from proxy.process.serve import warn_if_exposed, warn_if_resp_exposed
from proxy.serving import auth
from proxy.serving.auth import Authenticator, read_tokens_file
from proxy.serving.rate_limit import RateLimiter
from servers import q, request

TOKEN = "first-token-0123456789abcdef"
OTHER = "second-token-fedcba9876543210"


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# ----- the authenticator alone ---------------------------------------------------------------

def test_no_tokens_means_open():
    open_ = Authenticator()
    assert not open_.enabled and not open_.required_for("/")
    open_.check("/", [])


def test_every_configured_token_is_accepted_and_nothing_else():
    authn = Authenticator([TOKEN, OTHER])
    for token in (TOKEN, OTHER):
        authn.check("/", [f"Bearer {token}"])
    for token in ("", TOKEN[:-1], TOKEN + "x", TOKEN.upper(), OTHER + TOKEN):
        assert not authn.accepts(token)


@pytest.mark.parametrize("headers", [[], [f"Bearer {TOKEN}", f"Bearer {TOKEN}"], ["Bearer"], ["Bearer "],
                                     [f"Token {TOKEN}"], [f"Basic {TOKEN}"], [TOKEN],
                                     [f"Bearer\t{TOKEN}"], [f"Bearer {TOKEN} {TOKEN}"]])
def test_anything_but_one_well_formed_bearer_token_is_401(headers):
    with pytest.raises(Unauthorized) as caught:
        Authenticator([TOKEN]).check("/get/k", headers)
    assert caught.value.status == 401
    assert caught.value.headers["WWW-Authenticate"].startswith('Bearer realm="redis-proxy"')


def test_the_scheme_is_case_insensitive_the_token_is_not():
    authn = Authenticator([TOKEN])
    authn.check("/", [f"bearer {TOKEN}"])
    authn.check("/", [f"BEARER  {TOKEN}"])  # RFC 6750 §2.1: 1*SP
    with pytest.raises(Unauthorized):
        authn.check("/", [f"Bearer {TOKEN.upper()}"])


@pytest.mark.parametrize("value", [f"Bearer {TOKEN} ", f"Bearer {TOKEN}\t", f" Bearer {TOKEN}",
                                   f"\tBearer {TOKEN} \t "])
def test_whitespace_around_the_header_value_is_not_part_of_it(value):
    Authenticator([TOKEN]).check("/", [value])  # RFC 9110 §5.5: OWS around a field value


def test_comparison_visits_every_token_without_an_early_exit(monkeypatch):
    calls, real = [], hmac.compare_digest

    def counting(a, b):
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    authn = Authenticator([TOKEN, OTHER, "third-token-aaaaaaaaaaaaaaaa"])
    assert authn.accepts(TOKEN)  # matches the first one, still compares all three
    assert authn.accepts("x") is False
    # Digests of one fixed length: the presented token's length does not show either.
    assert calls == [(32, 32)] * 6


def test_health_alone_is_open_and_metrics_may_be_opened_alone():
    authn = Authenticator([TOKEN])
    assert not authn.required_for("/health")
    for path in ("/", "/get/k", "/nowhere", "/health/", "/HEALTH", "*", "/metrics", "/stats", "/dashboard"):
        assert authn.required_for(path), path
    scraped = Authenticator([TOKEN], metrics_require_auth=False)
    assert [scraped.required_for(path) for path in ("/metrics", "/stats", "/dashboard")] == [False, True, True]


# ----- failed authentications: AUTH_FAIL_LIMIT per client per minute ---------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limited(limit: int = 10, clock: Clock | None = None, **options) -> Authenticator:
    return Authenticator([TOKEN, OTHER], fail_limiter=RateLimiter(limit / 60, limit, clock=clock or Clock(),
                                                                 **options))


def outcome(authn: Authenticator, header: str | None, peer: str = "192.0.2.1", xff: tuple[str, ...] = ()) -> int:
    try:
        authn.check("/get/k", [] if header is None else [header], peer, xff)
    except (Unauthorized, TooManyRequests) as exc:
        return exc.status
    return 200


def test_past_the_failure_limit_the_address_is_blocked_even_for_a_valid_token():
    clock = Clock()
    authn = limited(10, clock)
    assert [outcome(authn, f"Bearer wrong-{i}") for i in range(10)] == [401] * 10
    with pytest.raises(TooManyRequests) as caught:
        authn.check("/get/k", [f"Bearer {TOKEN}"], "192.0.2.1")
    # 10 a minute: one attempt comes back every 6 s.
    assert caught.value.headers == {"Retry-After": "6"}
    assert caught.value.error == "too many failed authentications"
    assert caught.value.detail == ("over 10 failed authentications per minute from your address; "
                                   "retry in 6 s")
    assert outcome(authn, f"Bearer {TOKEN}", peer="192.0.2.2") == 200  # another client
    clock.now += 5.9
    assert outcome(authn, f"Bearer {TOKEN}") == 429
    clock.now += 0.1
    assert outcome(authn, f"Bearer {TOKEN}") == 200  # refilled: valid tokens spend nothing
    assert outcome(authn, f"Bearer {TOKEN}") == 200
    assert outcome(authn, "Bearer wrong") == 401  # the one attempt that came back
    assert outcome(authn, f"Bearer {TOKEN}") == 429


def test_only_presented_credentials_count_as_failures():
    authn = limited(2)
    # No Authorization header is not a guess (a client that forgot its token): not counted.
    assert [outcome(authn, None) for _ in range(20)] == [401] * 20
    assert outcome(authn, f"Bearer {TOKEN}") == 200
    # A malformed header is a refused credential like a wrong token.
    assert [outcome(authn, h) for h in ("Basic dXNlcjpwYXNz", "Bearer a b", "Bearer x")] == [401, 401, 429]


def test_open_routes_are_not_blocked():
    authn = limited(1)
    assert outcome(authn, "Bearer wrong") == 401
    authn.check("/health", [], "192.0.2.1")  # no authentication there, so nothing to refuse


def test_the_blocked_client_is_the_one_the_rate_limiter_sees_behind_trusted_proxies():
    authn = limited(1, trusted_proxies=["10.0.0.0/8"])
    assert outcome(authn, "Bearer wrong", "10.0.0.1", ("203.0.113.1",)) == 401
    assert outcome(authn, f"Bearer {TOKEN}", "10.0.0.1", ("203.0.113.1",)) == 429
    assert outcome(authn, f"Bearer {TOKEN}", "10.0.0.1", ("203.0.113.2",)) == 200
    # A spoofed hop from an untrusted peer does not buy a fresh budget.
    assert outcome(authn, "Bearer wrong", "192.0.2.9", ("1.1.1.1",)) == 401
    assert outcome(authn, f"Bearer {TOKEN}", "192.0.2.9", ("2.2.2.2",)) == 429


def test_auth_fail_limit_setting():
    default = authenticator_of(load_settings({"AUTH_TOKENS": TOKEN}, env_file=None)).fail_limiter
    assert (default.burst, default.rate) == (10, 10 / 60)
    assert authenticator_of(load_settings({"AUTH_TOKENS": TOKEN, "AUTH_FAIL_LIMIT": "0"},
                                          env_file=None)).fail_limiter is None
    three = authenticator_of(load_settings({"AUTH_TOKENS": TOKEN, "AUTH_FAIL_LIMIT": "3",
                                            "TRUSTED_PROXIES": "10.0.0.0/8"}, env_file=None)).fail_limiter
    assert (three.burst, three.rate) == (3, 3 / 60)
    assert three.clients.resolve("10.1.1.1", ["203.0.113.7"]) == "203.0.113.7"
    for bad in ("-1", "ten", "1.5"):
        with pytest.raises(ConfigError) as caught:
            load_settings({"AUTH_FAIL_LIMIT": bad}, env_file=None)
        assert "AUTH_FAIL_LIMIT" in str(caught.value)


# ----- settings --------------------------------------------------------------------------------

def test_tokens_file_skips_blank_lines_and_comments(tmp_path):
    path = tmp_path / "tokens"
    path.write_text(f"# operators\n\n{TOKEN}\n   \n  # old one, revoked\n  {OTHER}  \n")
    assert read_tokens_file(str(path)) == [TOKEN, OTHER]
    settings = load_settings({"AUTH_TOKENS": "third-token-0123456789abcdef", "AUTH_TOKENS_FILE": str(path)},
                             env_file=None)
    authn = authenticator_of(settings)
    assert all(authn.accepts(t) for t in (TOKEN, OTHER, "third-token-0123456789abcdef"))
    assert not authn.accepts("# operators")


def test_an_empty_tokens_file_stops_the_start_rather_than_leaving_it_open(tmp_path):
    path = tmp_path / "tokens"
    path.write_text("# nothing yet\n\n")
    with pytest.raises(ConfigError) as caught:
        authenticator_of(load_settings({"AUTH_TOKENS_FILE": str(path)}, env_file=None))
    assert "AUTH_TOKENS_FILE" in caught.value.problems[0]


def test_a_token_that_could_never_be_sent_is_refused_without_being_echoed():
    secret = "has space"
    with pytest.raises(ConfigError) as caught:
        authenticator_of(load_settings({"AUTH_TOKENS": f"{TOKEN},{secret}"}, env_file=None))
    assert "AUTH_TOKENS" in str(caught.value) and secret not in str(caught.value)


def test_short_tokens_are_warned_about(caplog):
    authenticator_of(load_settings({"AUTH_TOKENS": "abc"}, env_file=None))
    assert "shorter than 16" in caplog.text and "abc" not in caplog.text


def test_metrics_require_auth_setting():
    assert load_settings({}, env_file=None).metrics_require_auth is True
    assert load_settings({"METRICS_REQUIRE_AUTH": "false"}, env_file=None).metrics_require_auth is False


# ----- through the server ----------------------------------------------------------------------

@pytest.fixture
def guarded(make_proxy):
    return make_proxy(server_options={"authenticator": Authenticator([TOKEN, OTHER])})


def test_a_token_is_needed_for_the_url_role_and_get(guarded, upstream, r):
    url = upstream.serve("/a", b"secret page")
    r.set("plain", b"v")
    refused = request(guarded.port, q(url, "a"))
    assert refused.status == 401
    assert refused.headers["WWW-Authenticate"] == 'Bearer realm="redis-proxy"'
    assert refused.json() == {"error": "unauthorized",
                              "detail": "send 'Authorization: Bearer <token>' with a configured token"}
    assert upstream.hits["/a"] == 0 and r.exists("rp:a") == 0
    assert request(guarded.port, "/get/plain").status == 401
    ok = request(guarded.port, q(url, "a"), headers=bearer())
    assert (ok.status, ok.body) == (200, b"secret page")
    assert request(guarded.port, q(url, "a"), headers=bearer(OTHER)).headers["X-Cache"] == "HIT"
    assert request(guarded.port, "/get/plain", headers=bearer()).body == b"v"
    # The client's token is the proxy's business only: it never travels upstream.
    (_, sent), = upstream.requests
    assert "authorization" not in {name.lower() for name in sent}
    assert not any(TOKEN in value for value in sent.values())


def test_a_token_with_whitespace_around_it_is_accepted(guarded, r):
    r.set("plain", b"v")
    got = request(guarded.port, "/get/plain", headers={"Authorization": f"Bearer {TOKEN} "})
    assert (got.status, got.body) == (200, b"v")


def test_a_guesser_gets_429_and_other_clients_do_not(make_proxy, upstream, r):
    clock = Clock()
    authn = limited(10, clock, trusted_proxies=["127.0.0.1"])
    proxy = make_proxy(server_options={"authenticator": authn})
    url = upstream.serve("/a", b"page")
    guesser, other = {"X-Forwarded-For": "203.0.113.1"}, {"X-Forwarded-For": "203.0.113.2"}
    statuses = [request(proxy.port, q(url, "a"), headers={**guesser, **bearer(f"guess-{i:04d}")}).status
                for i in range(300)]
    assert statuses == [401] * 10 + [429] * 290
    blocked = request(proxy.port, q(url, "a"), headers={**guesser, **bearer()})
    assert (blocked.status, blocked.headers["Retry-After"]) == (429, "6")
    assert blocked.headers["Content-Type"] == "application/json"
    assert blocked.json() == {"error": "too many failed authentications",
                              "detail": "over 10 failed authentications per minute from your address; "
                                        "retry in 6 s"}
    assert upstream.hits["/a"] == 0 and r.exists("rp:a") == 0
    ok = request(proxy.port, q(url, "a"), headers={**other, **bearer()})
    assert (ok.status, ok.body) == (200, b"page")
    assert request(proxy.port, "/health", headers=guesser).status == 200
    clock.now += 6
    ok = request(proxy.port, q(url, "a"), headers={**guesser, **bearer()})
    assert (ok.status, ok.body, ok.headers["X-Cache"]) == (200, b"page", "HIT")


def test_wrong_token_says_so_in_the_challenge(guarded):
    got = request(guarded.port, "/?key=x", headers=bearer("wrong-token-0123456789"))
    assert got.status == 401
    assert got.headers["WWW-Authenticate"] == 'Bearer realm="redis-proxy", error="invalid_token"'


def test_health_stays_open(guarded):
    got = request(guarded.port, "/health")
    assert (got.status, got.json()) == (200, {"status": "ok", "redis": "ok", "l1_invalidation": "tracking"})


def test_purge_is_behind_the_tokens(guarded, upstream, r):
    url = upstream.serve("/p", b"keep me")
    request(guarded.port, q(url, "p"), headers=bearer())
    assert request(guarded.port, "/?key=p", method="DELETE").status == 401
    assert r.exists("rp:p") == 1
    assert request(guarded.port, "/?key=p", method="DELETE", headers=bearer()).status == 200
    assert r.exists("rp:p") == 0


@pytest.mark.parametrize("method,path", [("POST", "/?key=x"), ("GET", "/nowhere"), ("GET", "/?key=%zz"),
                                         ("GET", "/?url=not-a-url"), ("GET", "/get/%zz")])
def test_authentication_comes_before_every_other_check(guarded, method, path):
    # Without a token nothing else is revealed: not which methods, routes or parameters exist.
    assert request(guarded.port, path, method=method).status == 401
    assert request(guarded.port, path, method=method, headers=bearer()).status in (400, 404, 405)


# ----- the exposure warning --------------------------------------------------------------------

@pytest.mark.parametrize("host,auth_on,warns", [
    ("127.0.0.1", False, False), ("127.0.0.2", False, False), ("::1", False, False),
    ("[::1]", False, False), ("localhost", False, False), ("0.0.0.0", False, True), ("::", False, True),
    ("192.168.1.10", False, True), ("proxy.example", False, True), ("0.0.0.0", True, False)])
def test_a_public_bind_without_tokens_is_warned_about(caplog, host, auth_on, warns):
    caplog.set_level(logging.WARNING)
    assert warn_if_exposed(host, auth_on) is warns
    assert ("exposes the proxy" in caplog.text) is warns
    assert warn_if_resp_exposed(host, 6380, auth_on) is warns
    assert ("RESP_PORT=6380 on" in caplog.text) is warns
