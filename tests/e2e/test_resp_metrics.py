"""RESP traffic in /metrics and /stats (issue 21): each command answered on the RESP port counts
in `redis_proxy_requests_total{front="resp",command,status}` and in the latency histogram's
`front="resp"` series, pipelined ones one each; /stats gives each front end's figures. A real
redis-server behind, redis-py and raw sockets in front, HTTP and RESP sharing one Metrics as
start_front_ends makes them."""

import socket

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from redis.driver_info import DriverInfo

from http_server import make_server
from proxy.resp import server as resp_server
from proxy.serving.metrics import Metrics
from proxy.serving.stats import History
from servers import ServerThread, request, wait_until

Sample = tuple[str, tuple]


class Clock:
    def __init__(self, now: float = 1_800_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class Fronts:
    def __init__(self, http: ServerThread, resp: ServerThread, clock: Clock):
        self.http, self.resp, self.clock = http, resp, clock

    def client(self) -> redis.Redis:
        # No CLIENT SETINFO on connect (redis-py sends two by default): only the test's commands.
        return redis.Redis(host="127.0.0.1", port=self.resp.port, protocol=2, socket_timeout=5,
                           driver_info=DriverInfo(name=None, lib_version=None))

    def scrape(self) -> dict[Sample, float]:
        got = request(self.http.port, "/metrics")
        assert got.status == 200, got
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(got.body.decode())
                for s in family.samples}

    def resp_count(self, command: str, status: str) -> float:
        return self.scrape().get(resp_sample(command, status), 0)


def resp_sample(command: str, status: str) -> Sample:
    return ("redis_proxy_requests_total",
            (("command", command), ("front", "resp"), ("status", status)))


RESP_LATENCY_COUNT = ("redis_proxy_request_duration_seconds_count", (("front", "resp"),))
RESP_COMMANDS = ("redis_proxy_resp_commands_total", ())


@pytest.fixture
def fronts(make_proxy):
    """HTTP and RESP on port 0 over one proxy and one Metrics (its history on a clock the test
    moves), as start_front_ends wires them."""
    started = []

    def build(**resp_options) -> Fronts:
        proxy = make_proxy().proxy
        clock = Clock()
        metrics = Metrics(proxy, history=History(clock=clock))
        http = ServerThread(make_server("127.0.0.1", 0, proxy, metrics=metrics)).start()
        started.append(http)
        resp = ServerThread(resp_server.make_server("127.0.0.1", 0, proxy, metrics=metrics,
                                                    **resp_options)).start()
        started.append(resp)
        metrics.watch("resp", resp.server)
        return Fronts(http, resp, clock)

    yield build
    for thread in started:
        thread.stop()


def resp_figures(m: dict[Sample, float]) -> dict[tuple[str, str], float]:
    """The RESP series of requests_total as {(command, status): count}."""
    out = {}
    for (name, labels), value in m.items():
        got = dict(labels)
        if name == "redis_proxy_requests_total" and got.get("front") == "resp":
            out[(got["command"], got["status"])] = value
    return out


def test_each_resp_command_counts_once_by_command_and_status_and_in_the_latency_histogram(fronts, r):
    f = fronts()
    r.set("k", b"v")
    c = f.client()
    assert [c.get("k") for _ in range(3)] == [b"v"] * 3
    assert c.get("absent") is None  # a nil is an answer, not an error
    assert c.mget("k", "absent") == [b"v", None]
    assert c.ping() is True
    with pytest.raises(redis.ResponseError, match="wrong number of arguments for 'get'"):
        c.execute_command("GET")
    c.close()
    expected = {("get", "ok"): 4, ("get", "error"): 1, ("mget", "ok"): 1, ("ping", "ok"): 1}

    # A latency is observed once its reply is sent: the scrape may come a moment earlier.
    wait_until(lambda: f.scrape().get(RESP_LATENCY_COUNT) == 7)
    m = f.scrape()
    assert resp_figures(m) == expected
    assert m[RESP_LATENCY_COUNT] == 7 == m[RESP_COMMANDS]
    assert m[("redis_proxy_request_duration_seconds_bucket", (("front", "resp"), ("le", "+Inf")))] == 7
    assert m[("redis_proxy_request_duration_seconds_sum", (("front", "resp"),))] > 0
    # HTTP's series keep their two labels; only the scrapes themselves were HTTP requests.
    http = {labels: v for (name, labels), v in m.items()
            if name == "redis_proxy_requests_total" and ("front", "http") in labels}
    assert list(http) == [(("front", "http"), ("status", "200"))]


def test_a_pipeline_of_n_commands_counts_n_and_its_error_one(fronts, r):
    f = fronts()
    r.set("p", b"piped")
    c = f.client()
    pipe = c.pipeline(transaction=False)
    for _ in range(50):
        pipe.get("p")
    pipe.set("p", b"refused")  # a write: the proxy is read-only
    pipe.exists("p", "absent")
    answers = pipe.execute(raise_on_error=False)
    c.close()
    assert answers[:50] == [b"piped"] * 50 and answers[51] == 1
    assert "not supported by redis-proxy (read-only)" in str(answers[50])

    expected = {("get", "ok"): 50, ("other", "error"): 1, ("exists", "ok"): 1}
    wait_until(lambda: f.scrape().get(RESP_LATENCY_COUNT) == 52)
    assert resp_figures(f.scrape()) == expected


def test_unknown_commands_any_spelling_share_the_other_label_and_known_ones_their_name(fronts):
    f = fronts()
    c = f.client()
    for name in ("FOO", "bar", "baz1", "qux2", "FLUSHALL"):
        with pytest.raises(redis.ResponseError):
            c.execute_command(name, "x")
    assert c.execute_command("pInG") is True  # any case: still `ping`
    assert c.execute_command("Echo", "hi") == b"hi"
    c.close()
    wait_until(lambda: resp_figures(f.scrape()) == {("other", "error"): 5, ("ping", "ok"): 1,
                                                    ("echo", "ok"): 1})


def test_a_command_over_the_key_limit_counts_as_an_error_of_its_command(fronts):
    f = fronts(max_keys=3)
    c = f.client()
    with pytest.raises(redis.ResponseError, match="too many keys for 'mget': 4"):
        c.mget("a", "b", "c", "d")
    assert c.mget("a", "b", "c") == [None, None, None]  # the connection goes on
    c.close()
    wait_until(lambda: resp_figures(f.scrape()) == {("mget", "error"): 1, ("mget", "ok"): 1})


def test_a_protocol_error_counts_as_an_other_error(fronts):
    f = fronts()
    with socket.create_connection(("127.0.0.1", f.resp.port), timeout=5) as sock:
        sock.sendall(b"*1\r\n$4\r\nPING\r\n*x\r\n")  # a PING, then a bad array length
        data = b""
        while chunk := sock.recv(65536):  # the proxy answers, then closes
            data += chunk
    assert data == b"+PONG\r\n-ERR Protocol error: invalid multibulk length\r\n"
    wait_until(lambda: resp_figures(f.scrape()) == {("ping", "ok"): 1, ("other", "error"): 1})


def test_stats_by_front_gives_each_front_ends_requests_errors_and_latency(fronts, r):
    f = fronts()
    r.set("s", b"v")
    c = f.client()
    for _ in range(6):
        c.get("s")
    with pytest.raises(redis.ResponseError):
        c.execute_command("DEL", "s")
    c.close()
    assert request(f.http.port, "/get/s").status == 200
    assert request(f.http.port, "/nowhere").status == 404
    wait_until(lambda: request(f.http.port, "/stats").json()["requests"]["by_front"]["resp"]
               ["requests"] == 7)

    s = request(f.http.port, "/stats").json()

    resp = s["requests"]["by_front"]["resp"]
    assert {k: v for k, v in resp.items() if k != "latency_ms"} == {
        "requests": 7, "errors": 1, "by_status": {"error": 1, "ok": 6},
        "by_command": {"get": 6, "other": 1}}
    http = s["requests"]["by_front"]["http"]
    polls = http["by_status"]["200"] - 1  # the /stats requests of the wait, answered before this
    assert {k: v for k, v in http.items() if k != "latency_ms"} == {
        "requests": 2 + polls, "errors": 0, "by_status": {"200": 1 + polls, "404": 1}}
    for front in (resp, http):
        latency = front["latency_ms"]
        assert list(latency) == ["p50", "p90", "p99"]
        assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= 10_000
    # The totals are every front end's: RESP's statuses beside HTTP's.
    assert s["requests"]["total"] == 7 + 2 + polls
    assert s["requests"]["by_status"] == {"200": 1 + polls, "404": 1, "error": 1, "ok": 6}


def test_stats_by_front_lists_resp_with_nothing_served_yet(fronts):
    f = fronts()
    s = request(f.http.port, "/stats").json()
    assert s["requests"]["by_front"]["resp"] == {"requests": 0, "errors": 0, "by_status": {},
                                                 "latency_ms": None, "by_command": {}}


def test_stats_history_gives_http_and_resp_rates_per_interval(fronts, r):
    f = fronts()
    r.set("h", b"v")
    c = f.client()
    request(f.http.port, "/stats")  # the first point
    f.clock.now += 2
    pipe = c.pipeline(transaction=False)
    for _ in range(10):
        pipe.get("h")
    pipe.execute()
    c.get("h")  # a second batch: its count is added as it is answered, which records the point
    wait_until(lambda: resp_figures(f.scrape()) == {("get", "ok"): 11})
    f.clock.now += 2
    request(f.http.port, "/get/h")
    c.close()
    series = request(f.http.port, "/stats").json()["series"]

    # First interval: 11 RESP commands and the /stats and the scrapes of the wait over HTTP,
    # (the first scrape recorded the point at t0 + 2 as it was answered).
    first, second = series
    assert (first["t"], first["resp_per_s"]) == (1_800_000_002.0, 11 / 2)
    assert first["http_per_s"] >= 1 / 2
    assert first["requests_per_s"] == first["http_per_s"] + first["resp_per_s"]
    assert second["t"] == 1_800_000_004.0 and second["resp_per_s"] == 0.0
    assert second["requests_per_s"] == second["http_per_s"] > 0
