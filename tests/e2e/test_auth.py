"""HTTP authentication (CONTRACT §4): bearer tokens, checked first, /health left open."""

import hmac
import logging

import pytest

from http_server import authenticator_of
from load_env import load_settings
from proxy.errors import ConfigError, Unauthorized
from proxy.process.serve import warn_if_exposed
from proxy.serving import auth
from proxy.serving.auth import Authenticator, read_tokens_file
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
                                     [f"Token {TOKEN}"], [f"Basic {TOKEN}"], [TOKEN], [f"Bearer {TOKEN} "],
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


def test_health_is_open_and_metrics_follows_its_setting():
    authn = Authenticator([TOKEN])
    assert not authn.required_for("/health")
    assert not authn.required_for("/metrics")
    assert Authenticator([TOKEN], metrics_require_auth=True).required_for("/metrics")
    for path in ("/", "/get/k", "/nowhere", "/health/", "/HEALTH", "*"):
        assert authn.required_for(path), path


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
    assert load_settings({}, env_file=None).metrics_require_auth is False
    assert load_settings({"METRICS_REQUIRE_AUTH": "true"}, env_file=None).metrics_require_auth is True


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
