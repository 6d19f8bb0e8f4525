"""Separate budgets for CPU work and upstream waits (issue 19 item 9): a request waiting on an
upstream fetch (its own, a coalesced one, another process's) holds no MAX_PARALLEL slot, so
slow origins never stall cached hits, RESP reads or /health; fetches in flight have their own
bound, MAX_FETCHES, and one more waits FETCH_WAIT for a slot, then gets 503 (or the stale copy
that stale-if-error allows).

The slow origin answers only once the test sets an Event, after its checks: what answered
before that answered while every slow fetch was still in flight (no timing assertion; a
check that would wait behind them fails on its client's timeout instead)."""

import http.client
import socket
import threading
from typing import Any

import pytest

from load_env import Settings
from proxy.budgets import Gate
from proxy.resp import server as resp_server
from proxy.resp.replies import bulk, command
from proxy.serving import connection_loop
from proxy.upstream import fetcher as upstream_fetcher
from servers import Response, ServerThread, Upstream, q, request, wait_until
from test_metrics import scrape
from test_resp import exchange

PARALLEL = 2  # MAX_PARALLEL of the proxies under test
HOLD = 30.0  # the most the origin holds a slow answer, should a test fail before releasing it


class InFlight:
    """A request made in a thread of its own; `result()` waits for its answer."""

    def __init__(self, port: int, path: str):
        self.answer: Response | None = None
        self.thread = threading.Thread(target=self._run, args=(port, path), daemon=True)
        self.thread.start()

    def _run(self, port: int, path: str) -> None:
        self.answer = request(port, path, timeout=HOLD + 15)

    @property
    def done(self) -> bool:
        return not self.thread.is_alive()

    def result(self) -> Response:
        self.thread.join(HOLD + 20)
        assert self.answer is not None, "the request never got its answer"
        return self.answer


class Stage:
    """The HTTP and RESP front ends of one proxy sharing one MAX_PARALLEL gate of PARALLEL
    slots, an origin whose /slow/* paths answer only after `release`, and `k` in Redis."""

    def __init__(self, make_proxy: Any, upstream: Upstream, release: threading.Event,
                 **options: Any):
        self.upstream, self.release = upstream, release
        self.gate = Gate(PARALLEL)
        self.under_test = make_proxy(timeout=HOLD + 5, server_options={
            "max_parallel": PARALLEL, "parallel": self.gate}, **options)
        self.proxy = self.under_test.proxy
        self.http = self.under_test.port
        self.resp_thread = ServerThread(resp_server.make_server(
            "127.0.0.1", 0, self.proxy, max_parallel=PARALLEL, parallel=self.gate)).start()
        self.resp = self.resp_thread.port

    def get(self, path: str) -> InFlight:
        return InFlight(self.http, path)

    def assert_answered_meanwhile(self, cached_url: str) -> None:
        """A cached HIT, a RESP GET and /health answer while the slow fetches are blocked."""
        got = request(self.http, q(cached_url, "fast"), timeout=10)
        assert (got.status, got.body, got.headers["X-Cache"]) == (200, b"fast body", "HIT")
        assert exchange(self.resp, command(b"GET", b"k"), bulk(b"v")) == bulk(b"v")
        health = request(self.http, "/health", timeout=10)
        assert (health.status, health.json()["redis"]) == (200, "ok")
        assert not self.release.is_set()


def slow(release: threading.Event):
    """An origin route that answers only once `release` is set."""
    def route(handler: Any) -> None:
        release.wait(HOLD)
        handler.reply(200, b"slow " + handler.path.encode(), {"Content-Type": "text/plain"})
    return route


@pytest.fixture
def release():
    event = threading.Event()
    yield event
    event.set()  # whatever the test did, the origin lets its requests go


@pytest.fixture
def stage(make_proxy, upstream, release, r):
    r.set("k", b"v")
    built: list[Stage] = []

    def build(**options: Any) -> Stage:
        built.append(Stage(make_proxy, upstream, release, **options))
        return built[-1]
    yield build
    release.set()
    for one in built:
        one.resp_thread.stop()


def cached(stage: Stage) -> str:
    """A URL answered from the cache from now on."""
    url = stage.upstream.serve("/fast", b"fast body")
    assert request(stage.http, q(url, "fast")).headers["X-Cache"] == "MISS"
    return url


@pytest.mark.parametrize("slow_fetches", [PARALLEL, 2 * PARALLEL],
                         ids=["max_parallel", "twice_max_parallel"])
def test_slow_fetches_in_flight_stall_no_hit_resp_read_or_health(stage, release, slow_fetches):
    on_stage = stage()
    fast = cached(on_stage)
    paths = [f"/slow/{i}" for i in range(slow_fetches)]
    for path in paths:
        on_stage.upstream.route(path, slow(release))
    clients = [on_stage.get(q(on_stage.upstream.url(path), f"slow{i}")) for i, path in enumerate(paths)]
    wait_until(lambda: all(on_stage.upstream.hits[path] == 1 for path in paths))
    on_stage.assert_answered_meanwhile(fast)
    # Each slow request has given its slot back, and holds one of MAX_FETCHES.
    assert on_stage.gate.away == slow_fetches == on_stage.proxy.fetcher.in_flight.in_use
    assert not any(client.done for client in clients)
    release.set()
    for client, path in zip(clients, paths, strict=True):
        got = client.result()
        assert (got.status, got.body, got.headers["X-Cache"]) == (200, b"slow " + path.encode(), "MISS")
    assert on_stage.gate.away == 0 and on_stage.gate.in_use == 0
    assert on_stage.proxy.fetcher.in_flight.in_use == 0


def test_spare_threads_started_for_slow_fetches_end_once_the_fetches_are_back(stage, release):
    """A thread that goes off the CPU for a fetch starts a spare, so hits are served meanwhile;
    once the fetches are back the spares end at their next event, rather than stay and share
    the GIL with the serving thread (which halved L1 hit throughput after a single fetch)."""
    on_stage = stage()
    fast = cached(on_stage)
    server = on_stage.under_test.thread.server
    paths = [f"/slow/{i}" for i in range(2)]
    for path in paths:
        on_stage.upstream.route(path, slow(release))
    clients = [on_stage.get(q(on_stage.upstream.url(path), f"slow{i}")) for i, path in enumerate(paths)]
    wait_until(lambda: all(on_stage.upstream.hits[path] == 1 for path in paths))
    on_stage.assert_answered_meanwhile(fast)
    assert server.threads > connection_loop.THREADS
    release.set()
    assert [client.result().status for client in clients] == [200, 200]
    hit = f"GET {q(fast, 'fast')} HTTP/1.1\r\nHost: test\r\n\r\n".encode()
    connections = [socket.create_connection(("127.0.0.1", on_stage.http), timeout=10) for _ in range(8)]

    def busy_round() -> bool:
        """Eight requests at once (every thread gets events), answered; then the count."""
        for sock in connections:
            sock.sendall(hit)
        for sock in connections:
            answer = http.client.HTTPResponse(sock)
            answer.begin()
            assert (answer.status, answer.read()) == (200, b"fast body")
        return server.threads == connection_loop.THREADS
    try:
        # Bounded well below SPARE_IDLE: the spares end for being unneeded, not for being idle.
        wait_until(busy_round, timeout=connection_loop.SPARE_IDLE / 4)
    finally:
        for sock in connections:
            sock.close()


def test_requests_waiting_for_a_coalesced_slow_fetch_hold_no_processing_slot(stage, release):
    on_stage = stage()
    fast = cached(on_stage)
    url = on_stage.upstream.route("/slow/shared", slow(release))
    clients = [on_stage.get(q(url, "shared")) for _ in range(2 * PARALLEL)]
    # One fetch; the other requests wait for its answer (single flight), slots given back.
    wait_until(lambda: on_stage.upstream.hits["/slow/shared"] == 1 and on_stage.gate.away == 2 * PARALLEL)
    assert on_stage.proxy.fetcher.in_flight.in_use == 1
    on_stage.assert_answered_meanwhile(fast)
    assert not any(client.done for client in clients)
    release.set()
    assert [(c.result().status, c.result().body) for c in clients] == \
        [(200, b"slow /slow/shared")] * (2 * PARALLEL)
    assert on_stage.upstream.hits["/slow/shared"] == 1
    assert on_stage.gate.away == 0 and on_stage.gate.in_use == 0


def test_requests_waiting_for_another_proxys_fetch_hold_no_processing_slot(stage, release):
    fetching, waiting = stage(), stage()  # two proxies sharing the Redis (the fetch lock)
    fast = cached(waiting)
    url = fetching.upstream.route("/slow/elsewhere", slow(release))
    first = fetching.get(q(url, "elsewhere"))
    wait_until(lambda: fetching.upstream.hits["/slow/elsewhere"] == 1)
    clients = [waiting.get(q(url, "elsewhere")) for _ in range(2 * PARALLEL)]
    # One waits on the other proxy's fetch lock, the rest for its answer: none holds a slot.
    wait_until(lambda: waiting.proxy.stats["coalesced_waits"] == 1 and waiting.gate.away == 2 * PARALLEL)
    waiting.assert_answered_meanwhile(fast)
    assert not any(client.done for client in clients)
    release.set()
    assert (first.result().status, first.result().body) == (200, b"slow /slow/elsewhere")
    for client in clients:
        got = client.result()
        assert (got.status, got.body, got.headers["X-Cache"]) == (200, b"slow /slow/elsewhere", "HIT")
    assert fetching.upstream.hits["/slow/elsewhere"] == 1
    assert waiting.gate.away == 0 and waiting.gate.in_use == 0


# ----- MAX_FETCHES -------------------------------------------------------------------------------

def test_max_fetches_are_in_flight_at_once_and_one_more_gets_503_too_many_fetches(stage, release, r):
    on_stage = stage(fetcher_options={"max_fetches": 3, "fetch_wait": 0.2})
    fast = cached(on_stage)
    paths = [f"/slow/{i}" for i in range(3)]
    for path in paths + ["/slow/over"]:
        on_stage.upstream.route(path, slow(release))
    clients = [on_stage.get(q(on_stage.upstream.url(path), f"slow{i}")) for i, path in enumerate(paths)]
    wait_until(lambda: all(on_stage.upstream.hits[path] == 1 for path in paths))  # N in flight
    over = request(on_stage.http, q(on_stage.upstream.url("/slow/over"), "over"))  # N + 1
    assert over.status == 503
    assert over.headers["Retry-After"] == "1"
    assert over.headers["Content-Type"] == "application/json"
    assert over.json() == {"error": "too many fetches",
                           "detail": "3 upstream fetches are in flight (MAX_FETCHES) and none "
                                     "ended within 0.2 s; retry shortly"}
    assert on_stage.upstream.hits["/slow/over"] == 0 and r.exists("rp:over") == 0
    metrics = scrape(on_stage.http)
    assert metrics[("redis_proxy_upstream_fetches_in_flight", ())] == 3
    assert metrics[("redis_proxy_upstream_fetches_refused_total", ())] == 1
    assert metrics[("redis_proxy_requests_waiting_upstream", ())] == 3
    on_stage.assert_answered_meanwhile(fast)  # a full fetch budget stalls no hit either
    release.set()
    assert [client.result().status for client in clients] == [200, 200, 200]
    again = request(on_stage.http, q(on_stage.upstream.url("/slow/over"), "over"))
    assert (again.status, again.body) == (200, b"slow /slow/over")
    assert on_stage.upstream.hits["/slow/over"] == 1
    assert scrape(on_stage.http)[("redis_proxy_upstream_fetches_in_flight", ())] == 0


def test_the_fetch_budget_defaults_to_64_waiting_1_s():
    assert Settings().max_fetches == upstream_fetcher.MAX_FETCHES == 64
    fetcher = upstream_fetcher.Fetcher()
    assert (fetcher.in_flight.slots, fetcher.fetch_wait) == (64, upstream_fetcher.FETCH_WAIT) == (64, 1.0)


@pytest.mark.parametrize("cache_control, past_freshness, served", [
    ("max-age=60", 40, True),
    ("max-age=60", 300, True),  # the last second of STALE_IF_ERROR
    ("max-age=60", 301, False),
    ("max-age=60, must-revalidate", 40, False),  # RFC 9111 §4.2.4: never served stale
], ids=["within_stale_if_error", "at_its_end", "past_it", "must_revalidate"])
def test_over_max_fetches_a_copy_stale_if_error_allows_is_served_else_503(
        stage, release, r, cache_control, past_freshness, served):
    now = [1_000_000.0]  # before the origin's Date: the stored copy's age is the clock's alone
    on_stage = stage(fetcher_options={"max_fetches": 1, "fetch_wait": 0.2}, clock=lambda: now[0],
                     stale_ttl=600, stale_if_error=300)
    url = on_stage.upstream.serve("/page", b"stored copy", headers={"Cache-Control": cache_control})
    assert request(on_stage.http, q(url, "page")).headers["X-Cache"] == "MISS"
    now[0] += 60 + past_freshness
    holder = on_stage.get(q(on_stage.upstream.route("/slow/holder", slow(release)), "holder"))
    wait_until(lambda: on_stage.upstream.hits["/slow/holder"] == 1)  # the one fetch in flight

    got = request(on_stage.http, q(url, "page"))

    assert on_stage.proxy.fetcher.fetches_refused == 1 and on_stage.upstream.hits["/page"] == 1
    if served:
        assert (got.status, got.body, got.headers["X-Cache"], got.headers["Age"]) == \
            (200, b"stored copy", "STALE", str(60 + past_freshness))
        assert got.headers["Cache-Status"] == \
            f"redis-proxy; fwd=stale; detail=stale-if-error; ttl={-past_freshness}"
    else:
        assert (got.status, got.json()["error"], got.headers["Retry-After"]) == (503, "too many fetches", "1")
    assert not holder.done
    release.set()
    assert holder.result().status == 200
    assert r.ttl("rp:page") > 0  # the stored copy is neither replaced nor dropped meanwhile
