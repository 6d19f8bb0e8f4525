"""`make bench --quick`: every figure of the benchmark is reported (never how large it is:
only that each row has its figures, CPU per request included)."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from servers import ROOT

TOOLS = ("wrk", "redis-benchmark")


@pytest.mark.skipif(not all(shutil.which(tool) for tool in TOOLS), reason="wrk or redis-benchmark absent")
def test_quick_bench_reports_every_figure(tmp_path):
    done = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    (result,) = tmp_path.iterdir()
    report = json.loads(result.read_text())
    rows = {(row["row"], row["connections"]): row for row in report["rows"]}
    names = {name for name, _ in rows}
    assert names == {
        "stdlib ThreadingHTTPServer, fixed body",
        "GET /get/<key>, L1 hit", "GET /?url=&key=, L1 hit", "GET /?key=, L1 hit",
        "GET /get/<key>, Redis hit (L1 off, distinct keys)",
        "GET /?url=&key=, Redis hit (L1 off, distinct keys)",
        "GET /?key=, Redis hit (L1 off, distinct keys)",
        "GET /?url=&key=, miss (upstream fetch and store)",
        "RESP GET -P 1, Redis itself", "RESP GET -P 1, proxy, L1 hit",
        "RESP GET -P 16, Redis itself", "RESP GET -P 16, proxy, L1 hit",
        "GET /get/<key>, L1 hit, HTTP_WORKERS=1", "GET /get/<key>, L1 hit, HTTP_WORKERS=2",
        "reverse proxy GET, L1 hit", "reverse proxy GET, Redis hit (L1 off, distinct paths)",
        "reverse proxy GET, miss (upstream fetch and store)"} | (
        {"nginx proxy_cache, 1 worker, hit"} if shutil.which("nginx") else set())
    for row in report["rows"]:
        assert row["rps"] > 0 and row["p50_ms"] is not None and row["p99_ms"] is not None, row
        assert row.get("errors", 0) == 0 and row.get("non_2xx", 0) == 0, row
        assert (row["ratio"] is None) == (row["vs"] is None), row
        assert row["row"] in done.stdout
        # The server's own CPU per request, workers included; Redis serves --quick's few
        # thousand GETs within one clock tick, so its share may read 0.
        assert row["cpu_us"] >= 0 if row["row"].endswith("Redis itself") else row["cpu_us"] > 0, row
    site_hit = rows[("reverse proxy GET, L1 hit", 4)]
    if shutil.which("nginx"):  # the reverse proxy's L1 hits against nginx's, in the same run
        assert site_hit["nginx_ratio"] > 0 and "x nginx" in done.stdout
    else:
        assert "nginx_ratio" not in site_hit and "nginx not found" in done.stdout
    memory = report["memory"]
    assert memory["entry_body_bytes"] == 100 and memory["entry_memory_usage"] > 100
    assert memory["entry_redis_key_bytes"] > 0 and "per key" in done.stdout
    assert memory["rss_before_bytes"] > 0 and memory["rss_peak_bytes"] >= memory["rss_before_bytes"]
    assert "MEMORY USAGE" in done.stdout and "CACHE_MAX_BYTES" in done.stdout


def test_bench_without_its_tools_says_how_to_install_them(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    done = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PATH": str(empty)})
    assert done.returncode == 2
    assert "wrk, redis-benchmark not found" in done.stderr
    assert "apt-get install wrk redis-tools" in done.stderr
    assert not any(tmp_path.glob("*.json"))
