"""GET /stats and GET /dashboard (issue 11): the JSON behind the page, read from real traffic,
and the page itself loaded in a real headless Chromium, whose chart points are checked in the
DOM it renders. The history's clock is injected, so the chart's instants are set, not waited for."""

import os
import re
import shutil
import subprocess
import time
from urllib.parse import quote, urljoin

import pytest
import redis
from redis.driver_info import DriverInfo

from http_server import make_server
from proxy.resp import server as resp_server
from proxy.serving.auth import Authenticator
from proxy.serving.metrics import Metrics
from proxy.serving.site import Site
from proxy.serving.stats import History
from servers import ServerThread, q, request, wait_until

TOKEN = "dashboard-test-token-0123456789abcdef"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Clock:
    def __init__(self, now: float = 1_800_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def served(make_proxy):
    """The proxy served with a history on a clock the test moves; returns (port, clock, proxy)."""
    started = []

    def build(**proxy_options):
        under_test = make_proxy(**proxy_options)
        clock = Clock()
        metrics = Metrics(under_test.proxy, history=History(clock=clock))
        thread = ServerThread(make_server("127.0.0.1", 0, under_test.proxy, metrics=metrics)).start()
        started.append(thread)
        return thread.port, clock, under_test.proxy

    yield build
    for thread in started:
        thread.stop()


def test_stats_reports_tiers_upstream_redis_l1_connections_and_errors(served, upstream, r):
    port, _clock, _proxy = served()
    url = upstream.serve("/s", b"stats body")
    r.set("plain", b"v")
    assert request(port, q(url, "s")).headers["X-Cache"] == "MISS"
    assert request(port, q(url, "s")).headers["X-Cache"] == "HIT"
    request(port, "/get/plain")
    refused_url = "http://user:hunter2@127.0.0.1:1/down"  # a password, and nothing listens there
    assert request(port, "/?url=" + quote("http://127.0.0.1:1/down", safe="") + "&key=down").status == 502
    assert request(port, "/?url=" + quote(refused_url, safe="")).status == 403

    got = request(port, "/stats")

    assert got.status == 200 and got.headers["Content-Type"] == "application/json"
    assert got.headers["Cache-Control"] == "no-store"
    s = got.json()
    assert s["workers"] == 1
    by_front = s["requests"].pop("by_front")
    assert s["requests"] == {"total": 5, "by_status": {"200": 3, "403": 1, "502": 1}}
    http = by_front["http"]
    assert (http["requests"], http["errors"], http["by_status"]) == \
        (5, 1, {"200": 3, "403": 1, "502": 1})  # errors: the 5xx answers
    assert by_front["resp"]["requests"] == 0
    assert s["cache"] == {"hits": {"l1": 1, "redis": 0, "stale": 0}, "misses": 2, "hit_ratio": 0.3333}
    assert s["upstream"]["fetches"] == 1 and s["upstream"]["errors"] == 1
    assert s["upstream"]["refusals"] == {"userinfo": 1}
    assert s["upstream"]["mean_ms"] > 0
    info = r.info()
    assert s["redis"]["up"] is True and s["redis"]["maxmemory"] == info["maxmemory"]
    assert s["redis"]["used_memory"] > 0 and s["redis"]["evicted_keys"] == info["evicted_keys"]
    assert s["l1"] == {"entries": 2, "bytes": len(b"stats body") + 1, "capacity": 1024,
                       "max_bytes": 64 * 1024 * 1024}
    # This one, and earlier ones until their server threads notice they closed.
    assert list(s["connections"]) == ["http"] and s["connections"]["http"] >= 1
    (error,) = s["errors"]
    assert error["status"] == 502 and error["path"] == "/?url=***&key=***"  # query values masked
    assert error["detail"] == "connection refused by 127.0.0.1:1"


def test_stats_history_gives_requests_per_second_and_hit_ratio_per_interval(served, upstream):
    port, clock, _proxy = served()
    url = upstream.serve("/h", b"h")
    request(port, "/stats")  # the first point: nothing yet (a request counts once answered)
    clock.now += 2
    for _ in range(4):
        request(port, q(url, "h"))  # 1 miss, 3 hits
    request(port, "/stats")
    clock.now += 2
    for _ in range(8):
        request(port, "/get/absent")  # no cache lookup: no hit ratio
    series = request(port, "/stats").json()["series"]

    t0 = 1_800_000_000.0
    assert series == [
        {"t": t0 + 2, "requests_per_s": 2.5, "http_per_s": 2.5, "resp_per_s": 0.0, "hit_ratio": 0.75,
         "upstream_ms": series[0]["upstream_ms"]},
        {"t": t0 + 4, "requests_per_s": 4.5, "http_per_s": 4.5, "resp_per_s": 0.0, "hit_ratio": None,
         "upstream_ms": None},
    ]
    assert series[0]["upstream_ms"] > 0


@pytest.mark.parametrize("route", ["/stats", "/dashboard", "/_proxy/stats", "/_proxy/dashboard"])
@pytest.mark.parametrize("options", [{}, {"metrics_require_auth": False}])
def test_stats_and_dashboard_need_the_token_even_with_metrics_open(make_proxy, route, options):
    proxy = make_proxy(server_options={"authenticator": Authenticator([TOKEN], **options)})
    refused = request(proxy.port, route)
    assert refused.status == 401
    assert refused.json()["error"] == "unauthorized"
    assert request(proxy.port, route, headers={"Authorization": f"Bearer {TOKEN}"}).status == 200
    assert request(proxy.port, route, method="DELETE").status == 401  # authentication first


def test_last_errors_show_the_path_and_the_query_names_never_their_values(make_proxy):
    # In front of an origin where nothing listens: each site request is a 502.
    site = Site("http://127.0.0.1:1")
    proxy = make_proxy(origin=site.origin, server_options={"site": site})
    got = request(proxy.port, "/reset?reset_token=s3cret-reset&api_key=k3y&flag&empty=")
    assert got.status == 502
    (error,) = request(proxy.port, "/_proxy/stats").json()["errors"]
    assert (error["status"], error["path"]) == (502, "/reset?reset_token=***&api_key=***&***&empty=***")


def test_dashboard_is_one_page_with_nothing_fetched_from_elsewhere(make_proxy):
    proxy = make_proxy()
    got = request(proxy.port, "/dashboard")
    assert got.status == 200
    assert got.headers["Content-Type"] == "text/html; charset=utf-8"
    assert got.headers["Content-Security-Policy"].startswith("default-src 'none';")
    page = got.body.decode()
    assert page.startswith("<!doctype html>")
    assert not re.search(r"\b(src|href)\s*=|@import|url\(|<link", page)  # no external asset
    assert 'fetch("stats"' in page and "setInterval(refresh, REFRESH_MS)" in page


def test_the_page_reads_the_stats_beside_it_so_under_origin_url_the_proxys_not_the_origins(make_proxy, origin):
    origin.serve("/stats", b"the origin's own stats page")
    proxy = make_proxy(origin=origin.url(""), server_options={"site": Site(origin.url(""))})
    page = request(proxy.port, "/_proxy/dashboard").body.decode()
    fetched = re.search(r'fetch\("([^"]*)"', page).group(1)
    # A browser resolves the fetch against the page's own URL (RFC 3986 §5.2).
    stats = urljoin("/_proxy/dashboard", fetched)
    assert stats == "/_proxy/stats"
    got = request(proxy.port, stats)
    assert (got.status, got.headers["Content-Type"]) == (200, "application/json")
    assert "series" in got.json()
    assert urljoin("/dashboard", fetched) == "/stats"  # at the root, as before
    assert origin.hits["/stats"] == 0


def points(chart: str, series: str) -> list[float]:
    """The values of a chart's points of one series, in the DOM Chromium rendered."""
    return [float(v) for v in re.findall(
        rf'<circle class="point" data-series="{series}"[^>]*data-value="([\d.]+)"', chart)]


def chromium(tmp_path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "chromium-profile"
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1280,900",
         "--virtual-time-budget=5000", *args],
        capture_output=True, text=True, timeout=90, env={**os.environ, "HOME": str(tmp_path)})


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs "
                    "Debian's chromium); the dashboard's browser test needs it")
def test_dashboard_in_chromium_draws_the_chart_points(served, upstream, tmp_path):
    port, clock, _proxy = served()
    url = upstream.serve("/d", b"dashboard")
    request(port, "/stats")
    for batch in (3, 9, 5):  # three intervals of traffic, 2 s apart on the injected clock
        clock.now += 2
        for _ in range(batch):
            request(port, q(url, "d"))
        request(port, "/stats")
    clock.now += 2
    # Per interval: its requests, and the /stats request that closed the one before (answered
    # after its own point was taken), over 2 s.
    expected = [(1 + 3) / 2, (1 + 9) / 2, (1 + 5) / 2]

    page = f"http://127.0.0.1:{port}/dashboard"
    dom = chromium(tmp_path, "--dump-dom", page)
    shot = tmp_path / "dashboard.png"
    picture = chromium(tmp_path, f"--screenshot={shot}", page)

    assert dom.returncode == 0, dom.stderr[-2000:]
    rps_chart = re.search(r'<svg id="chart-rps".*?</svg>', dom.stdout, re.S).group(0)
    values = points(rps_chart, "http")
    # The page's own /stats requests add a point at the clock's instant: one more interval.
    assert values[:3] == expected and len(values) == 4
    assert points(rps_chart, "resp") == [0.0] * 4  # no RESP traffic: its line along the axis
    hits_chart = re.search(r'<svg id="chart-hits".*?</svg>', dom.stdout, re.S).group(0)
    assert len(re.findall(r'<circle class="point"', hits_chart)) == 3
    shown = int(re.search(r'<div class="big" id="requests">([\d,]+)</div>', dom.stdout).group(1).replace(",", ""))
    assert shown >= 17 + 4  # the traffic and the /stats requests, the page's own included
    assert "4 chart points" in dom.stdout
    # The time axis: the first, middle and last instants of the chart, in UTC.
    ticks = re.findall(r'<text class="tick"[^>]*>([^<]+)</text>', rps_chart)
    start = 1_800_000_000 + 2  # the first interval ends at the first 2 s step of the clock
    assert ticks == [time.strftime("%H:%M:%S", time.gmtime(t)) for t in (start, start + 3)] + [
        time.strftime("%H:%M:%S UTC", time.gmtime(start + 6))]
    assert picture.returncode == 0, picture.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


@pytest.fixture
def served_with_resp(make_proxy):
    """HTTP and RESP over one proxy and one Metrics, the history on a clock the test moves;
    returns (HTTP port, RESP port, clock)."""
    under_test = make_proxy()
    clock = Clock()
    metrics = Metrics(under_test.proxy, history=History(clock=clock))
    http = ServerThread(make_server("127.0.0.1", 0, under_test.proxy, metrics=metrics)).start()
    resp = ServerThread(resp_server.make_server("127.0.0.1", 0, under_test.proxy,
                                                metrics=metrics)).start()
    metrics.watch("resp", resp.server)
    yield http.port, resp.port, clock
    resp.stop()
    http.stop()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs "
                    "Debian's chromium); the dashboard's browser test needs it")
def test_dashboard_in_chromium_shows_resp_commands_beside_http(served_with_resp, r, tmp_path):
    port, resp_port, clock = served_with_resp
    r.set("dk", b"v")
    c = redis.Redis(host="127.0.0.1", port=resp_port, protocol=2, socket_timeout=5,
                    driver_info=DriverInfo(name=None, lib_version=None))
    request(port, "/stats")
    answered = 0
    for batch in (6, 20):  # two intervals of RESP traffic, each one pipeline
        clock.now += 2
        pipe = c.pipeline(transaction=False)
        for _ in range(batch):
            pipe.get("dk")
        assert pipe.execute() == [b"v"] * batch
        with pytest.raises(redis.ResponseError):
            c.execute_command("SET", "dk", "x")  # an error reply, counted as one
        answered += batch + 1
        # Counted as the replies are sent: wait until /stats has them (each /stats records
        # the interval's point with the totals it answers).
        wait_until(lambda total=answered: request(port, "/stats").json()["requests"]
                   ["by_front"]["resp"]["requests"] == total)
    c.close()
    clock.now += 2

    dom = chromium(tmp_path, "--dump-dom", f"http://127.0.0.1:{port}/dashboard")

    assert dom.returncode == 0, dom.stderr[-2000:]
    rps_chart = re.search(r'<svg id="chart-rps".*?</svg>', dom.stdout, re.S).group(0)
    # Per 2 s interval: the pipeline and the error; the page's own /stats adds a last interval.
    assert points(rps_chart, "resp") == [7 / 2, 21 / 2, 0.0]
    assert len(points(rps_chart, "http")) == 3
    assert '<div class="big" id="front-resp">28</div>' in dom.stdout
    detail = re.search(r'<div id="front-resp-detail">([^<]*)</div>', dom.stdout).group(1)
    assert re.fullmatch(r"errors: 2 · p50 [\d.]+ ms · p90 [\d.]+ ms · p99 [\d.]+ ms · get: 26 · other: 2",
                        detail), detail
    http_detail = re.search(r'<div id="front-http-detail">([^<]*)</div>', dom.stdout).group(1)
    assert http_detail.startswith("errors: 0 · p50 ")
