"""Rate limiting (CONTRACT §4, §6): token buckets per client, a fake clock, bounded memory."""

import subprocess

import pytest

import http_server
from http_server import rate_limiter_of
from load_env import load_settings
from proxy.errors import ConfigError, TooManyRequests
from proxy.resp import server as resp_server
from proxy.resp.replies import command
from proxy.serving.auth import Authenticator
from proxy.serving.rate_limit import ClientAddress, RateLimiter, bucket_key
from proxy.store.launcher import free_port
from servers import ServerThread, request, start_proxy, stop_proxy, wait_until
from test_resp import connect, read_exactly, read_until_closed


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def refused(limiter: RateLimiter, peer: str = "192.0.2.1", xff: tuple[str, ...] = ()) -> TooManyRequests | None:
    try:
        limiter.check(peer, xff)
    except TooManyRequests as exc:
        return exc
    return None


# ----- the bucket --------------------------------------------------------------------------

def test_burst_then_the_steady_rate():
    clock = Clock()
    limiter = RateLimiter(2, 4, clock=clock)
    assert [refused(limiter) for _ in range(4)] == [None] * 4
    over = refused(limiter)
    assert over is not None and over.status == 429 and over.headers == {"Retry-After": "1"}
    clock.now += 0.5  # one token back at 2/s
    assert refused(limiter) is None and refused(limiter) is not None
    clock.now += 10  # refilled to the burst, never beyond it
    assert [refused(limiter) for _ in range(5)].count(None) == 4


def test_default_burst_is_twice_the_rate_and_at_least_one():
    assert RateLimiter(5).burst == 10
    assert RateLimiter(0.2).burst == 1


def test_retry_after_is_whole_seconds_rounded_up():
    clock = Clock()
    limiter = RateLimiter(0.1, 1, clock=clock)
    assert refused(limiter) is None
    assert refused(limiter).headers["Retry-After"] == "10"
    clock.now += 7.5
    assert refused(limiter).headers["Retry-After"] == "3"
    clock.now += 2.6
    assert refused(limiter) is None


def test_clients_have_buckets_of_their_own_and_an_ipv6_64_is_one_client():
    clock = Clock()
    limiter = RateLimiter(1, 1, clock=clock)
    assert refused(limiter, "192.0.2.1") is None and refused(limiter, "192.0.2.1") is not None
    assert refused(limiter, "192.0.2.2") is None
    assert refused(limiter, "2001:db8:1:2::1") is None
    assert refused(limiter, "2001:db8:1:2:ffff::9") is not None  # same /64
    assert refused(limiter, "2001:db8:1:3::1") is None
    assert bucket_key("::ffff:192.0.2.7") == "192.0.2.7"


def test_memory_is_bounded_under_a_flood_of_addresses():
    clock = Clock()
    limiter = RateLimiter(1, 2, max_clients=100, clock=clock)
    for i in range(5000):
        limiter.check(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}")
    assert len(limiter) == 100


def test_idle_buckets_are_forgotten_once_full_again():
    clock = Clock()
    limiter = RateLimiter(1, 2, clock=clock)
    for i in range(50):
        limiter.check(f"10.0.0.{i}")
    assert len(limiter) == 50
    clock.now += 2.01  # burst / rate: every one of them is full again, same as new
    limiter.check("10.0.1.1")
    assert len(limiter) == 1


# ----- who the client is -------------------------------------------------------------------

def test_forwarded_for_is_ignored_from_an_untrusted_peer():
    clients = ClientAddress(["10.0.0.0/8"])
    assert clients.resolve("192.0.2.9", ["203.0.113.5"]) == "192.0.2.9"
    assert ClientAddress().resolve("127.0.0.1", ["203.0.113.5"]) == "127.0.0.1"


@pytest.mark.parametrize("headers,client", [
    (["203.0.113.5"], "203.0.113.5"),
    (["198.51.100.1, 203.0.113.5"], "203.0.113.5"),  # the left one is the client's say-so
    (["198.51.100.1, 203.0.113.5, 10.1.2.3"], "203.0.113.5"),  # a second trusted hop is skipped
    (["198.51.100.1", "203.0.113.5, 10.1.2.3"], "203.0.113.5"),  # several headers are one list
    (["10.9.9.9, 10.1.2.3"], "10.9.9.9"),  # all trusted: the farthest one
    (["not-an-ip, 10.1.2.3"], "10.1.2.3"),  # garbage stops the walk at the last real hop
    (["garbage"], "10.0.0.1"),
    ([], "10.0.0.1"),
    (["203.0.113.5:4711"], "203.0.113.5"),
    (["[2001:db8::5]:443"], "2001:db8::5"),
    (["2001:db8::5"], "2001:db8::5"),
])
def test_right_most_untrusted_address_behind_trusted_proxies(headers, client):
    assert ClientAddress(["10.0.0.0/8", "::1"]).resolve("10.0.0.1", headers) == client


def test_ipv4_mapped_peer_is_matched_against_ipv4_networks():
    assert ClientAddress(["127.0.0.1"]).resolve("::ffff:127.0.0.1", ["203.0.113.5"]) == "203.0.113.5"


def test_spoofed_forwarded_for_does_not_buy_a_fresh_bucket():
    clock = Clock()
    limiter = RateLimiter(1, 1, clock=clock)  # no trusted proxies
    assert refused(limiter, "192.0.2.1", ("1.1.1.1",)) is None
    assert refused(limiter, "192.0.2.1", ("2.2.2.2",)) is not None


# ----- settings ----------------------------------------------------------------------------

def test_settings_build_the_limiter_or_none():
    assert rate_limiter_of(load_settings({}, env_file=None)) is None
    limiter = rate_limiter_of(load_settings({"RATE_LIMIT": "2.5", "TRUSTED_PROXIES": "10.0.0.0/8, ::1"},
                                            env_file=None))
    assert (limiter.rate, limiter.burst) == (2.5, 5.0)
    assert limiter.clients.resolve("10.2.3.4", ["203.0.113.9"]) == "203.0.113.9"
    assert rate_limiter_of(load_settings({"RATE_LIMIT": "1", "RATE_LIMIT_BURST": "7"}, env_file=None)).burst == 7


@pytest.mark.parametrize("env", [{"TRUSTED_PROXIES": "10.0.0.0/33"}, {"TRUSTED_PROXIES": "proxy.local"},
                                 {"RATE_LIMIT": "0"}, {"RATE_LIMIT": "-1"}, {"RATE_LIMIT_BURST": "0"}])
def test_bad_values_are_refused_at_start(env):
    with pytest.raises(ConfigError) as caught:
        load_settings(env, env_file=None)
    assert next(iter(env)) in str(caught.value)


# ----- through the server ------------------------------------------------------------------

def test_the_server_answers_429_with_retry_after(make_proxy, r):
    clock = Clock()
    proxy = make_proxy(server_options={"rate_limiter": RateLimiter(1, 2, clock=clock)})
    r.set("k", b"v")
    assert [request(proxy.port, "/get/k").status for _ in range(2)] == [200, 200]
    limited = request(proxy.port, "/get/k")
    assert limited.status == 429 and limited.headers["Retry-After"] == "1"
    assert limited.headers["Content-Type"] == "application/json"
    assert limited.json()["error"] == "rate limited" and "retry in 1 s" in limited.json()["detail"]
    clock.now += 1
    assert request(proxy.port, "/get/k").status == 200


def test_refused_authentication_does_not_spend_the_clients_tokens(make_proxy, r):
    clock = Clock()
    token = "rate-test-token-0123456789"
    proxy = make_proxy(server_options={"rate_limiter": RateLimiter(1, 1, clock=clock),
                                       "authenticator": Authenticator([token])})
    r.set("k", b"v")
    assert [request(proxy.port, "/get/k").status for _ in range(3)] == [401, 401, 401]
    ok = request(proxy.port, "/get/k", headers={"Authorization": f"Bearer {token}"})
    assert ok.status == 200


def test_clients_behind_a_trusted_proxy_are_told_apart(make_proxy, r):
    clock = Clock()
    proxy = make_proxy(server_options={
        "rate_limiter": RateLimiter(1, 1, trusted_proxies=["127.0.0.1"], clock=clock)})
    r.set("k", b"v")
    a, b = {"X-Forwarded-For": "203.0.113.1"}, {"X-Forwarded-For": "203.0.113.2"}
    assert request(proxy.port, "/get/k", headers=a).status == 200
    assert request(proxy.port, "/get/k", headers=a).status == 429
    assert request(proxy.port, "/get/k", headers=b).status == 200
    # A client-written hop to the left changes nothing: the proxy's own entry is the one used.
    assert request(proxy.port, "/get/k", headers={"X-Forwarded-For": "198.51.100.7, 203.0.113.1"}).status == 429


# ----- RESP: the same limiter, so a client has one budget over both front ends ----------------

def rate_limited(wait: int) -> bytes:
    return b"-ERR rate limited, retry after %d s\r\n" % wait


def talk(sock, sent: bytes, reply: bytes) -> None:
    sock.sendall(sent)
    assert read_exactly(sock, len(reply)) == reply, sent


@pytest.fixture
def both_front_ends(make_proxy):
    """HTTP and RESP over one proxy, sharing the limiter they are given: (http port, resp port)."""
    threads = []

    def build(limiter: RateLimiter) -> tuple[int, int]:
        http = make_proxy(server_options={"rate_limiter": limiter})
        resp = ServerThread(resp_server.make_server("127.0.0.1", 0, http.proxy, rate_limiter=limiter)).start()
        threads.append(resp)
        return http.port, resp.port

    yield build
    for thread in threads:
        thread.stop()


def test_resp_commands_draw_on_the_clients_http_budget(both_front_ends, r):
    clock = Clock()
    http_port, resp_port = both_front_ends(RateLimiter(1, 3, clock=clock))
    r.set("k", b"v")
    assert [request(http_port, "/get/k").status for _ in range(2)] == [200, 200]
    with connect(resp_port) as sock:
        talk(sock, command(b"GET", b"k"), b"$1\r\nv\r\n")  # the third of the burst
        talk(sock, command(b"GET", b"k"), rate_limited(1))
        talk(sock, command(b"MGET", b"k", b"k") + command(b"PING"), rate_limited(1) * 2)
        assert request(http_port, "/get/k").status == 429  # the same budget, spent
        clock.now += 1
        talk(sock, command(b"MGET", b"k", b"k"), b"*2\r\n$1\r\nv\r\n$1\r\nv\r\n")  # still usable
        talk(sock, command(b"GET", b"k"), rate_limited(1))
    assert request(http_port, "/get/k").status == 429


def test_resp_connection_set_up_is_not_counted(both_front_ends, r):
    """What client libraries send on their own when they connect (redis-py: HELLO, CLIENT
    SETINFO twice) does not spend the budget; AUTH has its own (AUTH_FAIL_LIMIT)."""
    clock = Clock()
    _, resp_port = both_front_ends(RateLimiter(1, 1, clock=clock))
    r.set("k", b"v")
    with connect(resp_port) as sock:
        talk(sock, command(b"GET", b"k"), b"$1\r\nv\r\n")
        talk(sock, command(b"GET", b"k"), rate_limited(1))
        talk(sock, command(b"CLIENT", b"SETINFO", b"LIB-NAME", b"x") + command(b"CLIENT", b"ID")
             + command(b"AUTH", b"default", b"x") + command(b"HELLO", b"2"),
             b"+OK\r\n:1\r\n+OK\r\n*14\r\n")
        sock.sendall(command(b"QUIT"))  # after the rest of HELLO's map
        assert read_until_closed(sock).endswith(b"$7\r\nmodules\r\n*0\r\n+OK\r\n")


def test_resp_clients_have_budgets_of_their_own(both_front_ends, r):
    clock = Clock()
    limiter = RateLimiter(1, 1, clock=clock)
    _, resp_port = both_front_ends(limiter)
    limiter.check("192.0.2.1")  # another client spends its whole budget
    r.set("k", b"v")
    with connect(resp_port) as sock:
        talk(sock, command(b"GET", b"k"), b"$1\r\nv\r\n")


def test_the_app_wires_tokens_file_and_rate_limit(tmp_path, redis_url, r):
    """The real process: AUTH_TOKENS_FILE and RATE_LIMIT from the environment take effect."""
    tokens = tmp_path / "tokens"
    tokens.write_text("# ops\napp-token-0123456789abcdef\n")
    port = free_port()
    process = start_proxy({"HTTP_PORT": str(port), "RESP_PORT": "0", "REDIS_URL": redis_url,
                           "AUTH_TOKENS_FILE": str(tokens), "RATE_LIMIT": "0.01", "RATE_LIMIT_BURST": "2",
                           "LOG_FILE": str(tmp_path / "log")}, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: (tmp_path / "log").exists() and "HTTP on" in (tmp_path / "log").read_text(),
                   timeout=20, interval=0.05)
        r.set("k", b"v")
        bearer = {"Authorization": "Bearer app-token-0123456789abcdef"}
        assert request(port, "/get/k").status == 401
        assert [request(port, "/get/k", headers=bearer).status for _ in range(3)] == [200, 200, 429]
    finally:
        code, stderr = stop_proxy(process)
    assert code == 0, stderr


def test_the_app_gives_both_front_ends_one_rate_limit_and_one_failure_budget(make_proxy, r):
    token = "app-token-0123456789abcdef"
    settings = load_settings({"HTTP_PORT": "0", "RESP_PORT": str(free_port()), "RATE_LIMIT": "0.01",
                              "RATE_LIMIT_BURST": "2", "AUTH_TOKENS": token, "AUTH_FAIL_LIMIT": "1"},
                             env_file=None)
    servers = http_server.start_front_ends(settings, make_proxy().proxy)
    try:
        http, resp = servers
        r.set("k", b"v")
        bearer = {"Authorization": f"Bearer {token}"}
        assert [request(http.port, "/get/k", headers=bearer).status for _ in range(2)] == [200, 200]
        with connect(resp.port) as sock:
            talk(sock, command(b"AUTH", token.encode()) + command(b"GET", b"k"), b"+OK\r\n" + rate_limited(100))
            talk(sock, command(b"AUTH", b"wrong-token"),
                 b"-WRONGPASS invalid username-password pair or user is disabled.\r\n")
        blocked = request(http.port, "/get/k", headers=bearer)
        assert (blocked.status, blocked.json()["error"]) == (429, "too many failed authentications")
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
