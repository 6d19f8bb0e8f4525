"""`make bench`: the proxy's hit paths against the ceiling, in one run: a bare stdlib HTTP
server with the same body (HTTP) and Redis itself (RESP), measured with wrk and
redis-benchmark, everything on loopback and bounded in time; and, when nginx is installed,
nginx's `proxy_cache` (one worker) in front of the same origin, beside the reverse-proxy rows.
The servers are bench/servers.py's, the load bench/load.py's, the memory rows bench/memory.py's.

Figures are printed as a table with ratios and written as JSON under bench/results/; they are
never asserted: they depend on the machine. `--quick` runs every row for about a second with
tiny loads (the test suite runs it once, to check that every figure is reported).
"""

import argparse
import json
import os
import shutil
import sys
import time
from typing import Any
from urllib.parse import quote

import redis

from bench.load import INSTALL, redis_benchmark, wrk
from bench.memory import entry_memory, l1_memory
from bench.servers import ROOT, VALUE_SIZE, ceiling, get, nginx, proxy
from proxy.store.launcher import RedisServer, free_port

RESULTS = os.path.join(ROOT, "bench", "results")
SITE_ROW = "reverse proxy GET"  # ORIGIN_URL mode's rows (a path of the origin)
NGINX_ROW = "nginx proxy_cache, 1 worker, hit"
NO_NGINX = ("nginx not found: its proxy_cache row is skipped (on Debian or Ubuntu `apt-get install "
            "nginx-light`)")


def run(quick: bool) -> dict[str, Any]:
    seconds = 1.0 if quick else 8.0
    keys = 20 if quick else 1000  # distinct keys of the Redis-hit rows
    conns = (4,) if quick else (16, 64)
    rows: list[dict[str, Any]] = []
    memory: dict[str, Any] = {}
    origin_port, ceiling_port = free_port(), free_port()
    with RedisServer() as store, ceiling(origin_port), ceiling(ceiling_port) as top:
        client = redis.Redis.from_url(store.url)
        client.set("bench", b"v" * VALUE_SIZE)
        client.set("key:__rand_int__", b"v" * VALUE_SIZE)  # what redis-benchmark -t get reads
        client.mset({f"bench:{i}": b"v" * VALUE_SIZE for i in range(keys)})
        origin = f"http://127.0.0.1:{origin_port}"
        url_of = lambda path: quote(origin + path, safe="").replace("%7Bi%7D", "{i}")  # noqa: E731
        hit_paths = {"/get/<key>": "/get/bench", "/?url=&key=": f"/?url={url_of('/page')}&key=bench",
                     "/?key=": "/?key=bench"}

        def measure(name: str, port: int, path: str, tier: str, distinct: bool = False,
                    keys: int = 0, pid: int | None = None) -> None:
            """`distinct`: `path` has {i}, one key after another (or a new one each: keys=0).
            `pid`: the proxy's, for its CPU per request."""
            for c in conns:
                if distinct:
                    figures = wrk(f"http://127.0.0.1:{port}/", seconds, c, template=path, keys=keys,
                                  pid=pid)
                else:
                    figures = wrk(f"http://127.0.0.1:{port}{path}", seconds, c, pid=pid)
                rows.append({"row": name, "tier": tier, "connections": c, **figures,
                             "vs": "ceiling"})

        for c in conns:
            figures = wrk(f"http://127.0.0.1:{ceiling_port}/", seconds, c, pid=top.pid)
            rows.append({"row": "stdlib ThreadingHTTPServer, fixed body", "tier": "ceiling",
                         "connections": c, **figures, "vs": None})

        http_port, resp_port = free_port(), free_port()
        with proxy(store.url, http_port, origin_port, resp_port=resp_port) as child:
            status, _ = get(http_port, hit_paths["/?url=&key="])  # fetch once: the rest hit
            assert status == 200, status
            for route, path in hit_paths.items():
                get(http_port, path)  # into L1
                measure(f"GET {route}, L1 hit", http_port, path, "l1", pid=child.pid)
            measure("GET /?url=&key=, miss (upstream fetch and store)", http_port,
                    f"/?url={url_of('/miss/{i}')}&key=miss:{{i}}", "miss", distinct=True, pid=child.pid)
            for pipeline in (1, 16):
                for name, port, pid in (("Redis itself", store.port, store.pid),
                                        ("proxy, L1 hit", resp_port, child.pid)):
                    requests = (2_000 if quick else 100_000) * (4 if pipeline > 1 else 1)
                    figures = redis_benchmark(port, requests, pipeline, pid)
                    rows.append({"row": f"RESP GET -P {pipeline}, {name}", "tier": "resp",
                                 "connections": 50, "pipeline": pipeline, **figures,
                                 "vs": None if port == store.port else f"redis -P {pipeline}"})
            memory.update(entry_memory(client, http_port, url_of))
        _site_rows(store.url, origin, origin_port, keys, measure, rows, seconds, conns)
        no_l1_port = free_port()
        with proxy(store.url, no_l1_port, origin_port, cache_capacity=0, l1_invalidation="ttl") as child:
            for i in range(keys):  # the URL role's entries, one per key, stored once
                get(no_l1_port, f"/?url={url_of(f'/page/{i}')}&key=bench:{i}")
            measure("GET /get/<key>, Redis hit (L1 off, distinct keys)", no_l1_port,
                    "/get/bench:{i}", "redis", distinct=True, keys=keys, pid=child.pid)
            measure("GET /?url=&key=, Redis hit (L1 off, distinct keys)", no_l1_port,
                    f"/?url={url_of('/page/{i}')}&key=bench:{{i}}", "redis", distinct=True, keys=keys,
                    pid=child.pid)
            measure("GET /?key=, Redis hit (L1 off, distinct keys)", no_l1_port, "/?key=bench:{i}",
                    "redis", distinct=True, keys=keys, pid=child.pid)
        for count in (1, 2):
            port = free_port()
            with proxy(store.url, port, origin_port, http_workers=count) as child:
                wrk(f"http://127.0.0.1:{port}/get/bench", 1, conns[-1])  # every worker's L1
                figures = wrk(f"http://127.0.0.1:{port}/get/bench", seconds, conns[-1], pid=child.pid)
                rows.append({"row": f"GET /get/<key>, L1 hit, HTTP_WORKERS={count}", "tier": "workers",
                             "connections": conns[-1], "workers": count, **figures,
                             "vs": "HTTP_WORKERS=1"})
        memory.update(l1_memory(client, store.url, origin_port, 200 if quick else 2000,
                                 (4 if quick else 16) * 1024 * 1024))
        client.close()
    _ratios(rows)
    notes = [] if shutil.which("nginx") else [NO_NGINX]
    return {"when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "quick": quick, "seconds": seconds,
            "value_bytes": VALUE_SIZE, "cores": os.cpu_count(), "rows": rows, "memory": memory,
            "notes": notes}


def _site_rows(redis_url: str, origin: str, origin_port: int, keys: int, measure: Any,
               rows: list[dict[str, Any]], seconds: float, conns: tuple[int, ...]) -> None:
    """Reverse-proxy mode (ORIGIN_URL = the origin): its L1 hits, its Redis hits (L1 off,
    distinct paths), its misses; and nginx's `proxy_cache` hits in front of the same origin."""
    site_port = free_port()
    with proxy(redis_url, site_port, origin_port, origin_url=origin) as child:
        for _ in range(2):  # fetched and stored, then into L1 (and the proxy is built)
            status, _ = get(site_port, "/site")
            assert status == 200, status
        measure(f"{SITE_ROW}, L1 hit", site_port, "/site", "l1", pid=child.pid)
        measure(f"{SITE_ROW}, miss (upstream fetch and store)", site_port, "/site-miss/{i}", "miss",
                distinct=True, pid=child.pid)
    no_l1_port = free_port()
    with proxy(redis_url, no_l1_port, origin_port, origin_url=origin, cache_capacity=0,
               l1_invalidation="ttl") as child:
        for i in range(keys):  # one entry per path, stored once
            get(no_l1_port, f"/site/{i}")
        measure(f"{SITE_ROW}, Redis hit (L1 off, distinct paths)", no_l1_port, "/site/{i}", "redis",
                distinct=True, keys=keys, pid=child.pid)
    if not shutil.which("nginx"):
        return
    nginx_port = free_port()
    with nginx(nginx_port, origin_port) as server:
        for _ in range(2):  # stored, then a hit
            status, _ = get(nginx_port, "/site")
            assert status == 200, status
        for c in conns:
            figures = wrk(f"http://127.0.0.1:{nginx_port}/site", seconds, c, pid=server.pid)
            rows.append({"row": NGINX_ROW, "tier": "nginx", "connections": c, **figures,
                         "vs": "ceiling"})


def _ratios(rows: list[dict[str, Any]]) -> None:
    """Each row's requests/s over its reference's, at the same number of connections."""
    def reference(row: dict[str, Any]) -> dict[str, Any] | None:
        for other in rows:
            if row["vs"] == "ceiling" and other["tier"] == "ceiling" \
                    and other["connections"] == row["connections"]:
                return other
            if row["vs"] and row["vs"].startswith("redis -P") and other["tier"] == "resp" \
                    and other["vs"] is None and other["pipeline"] == row["pipeline"]:
                return other
            if row["vs"] == "HTTP_WORKERS=1" and other.get("workers") == 1:
                return other
        return None

    for row in rows:
        ref = reference(row) if row["vs"] else None
        row["ratio"] = round(row["rps"] / ref["rps"], 3) if ref and ref["rps"] else None
        # The reverse proxy's L1 hits against nginx's proxy_cache hits too, when it ran.
        nginx_row = next((other for other in rows if other["tier"] == "nginx"
                          and other["connections"] == row["connections"]), None)
        if row["row"] == f"{SITE_ROW}, L1 hit" and nginx_row and nginx_row["rps"]:
            row["nginx_ratio"] = round(row["rps"] / nginx_row["rps"], 3)


def table(report: dict[str, Any]) -> str:
    lines = [f"{'path':56} {'conns':>5} {'req/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'err':>4} "
             f"{'non2xx':>6} {'cpu us':>7} {'ratio':>6}  vs"]
    for row in report["rows"]:
        p50 = "" if row.get("p50_ms") is None else f"{row['p50_ms']:7.2f}"
        p99 = "" if row.get("p99_ms") is None else f"{row['p99_ms']:7.2f}"
        ratio = "" if row.get("ratio") is None else f"{row['ratio']:6.3f}"
        cpu_us = "" if row.get("cpu_us") is None else f"{row['cpu_us']:7.1f}"
        lines.append(f"{row['row']:56} {row['connections']:>5} {row['rps']:>9,.0f} {p50:>7} {p99:>7} "
                     f"{row.get('errors', 0):>4} {row.get('non_2xx', 0):>6} {cpu_us:>7} {ratio:>6}  {row['vs'] or ''}"
                     + (f"; {row['nginx_ratio']:.3f} x nginx" if "nginx_ratio" in row else ""))
    memory = report["memory"]
    lines += report.get("notes", [])
    lines.append("")
    lines.append(f"stored entry ({memory['entry_body_bytes']} B body, {memory['entry_kept_header_bytes']} B "
                 f"kept headers): MEMORY USAGE {memory['entry_memory_usage']} B, overhead "
                 f"{memory['entry_overhead_bytes']} B (metadata {memory['entry_metadata_bytes']} B; "
                 f"Redis's own per key {memory['entry_redis_key_bytes']} B: the body alone under "
                 f"{memory['entry_key']} would take {memory['entry_body_bytes'] + memory['entry_redis_key_bytes']} B)")
    lines.append(f"L1 under {memory['l1_values_streamed']} distinct {memory['l1_value_bytes'] // 1024} KiB "
                 f"values, CACHE_MAX_BYTES={memory['l1_cache_max_bytes'] // 2**20} MiB: RSS "
                 f"{memory['rss_before_bytes'] / 2**20:.1f} -> peak {memory['rss_peak_bytes'] / 2**20:.1f} MiB "
                 f"(+{memory['rss_growth_bytes'] / 2**20:.1f} MiB)")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="about a second a row, tiny loads")
    parser.add_argument("--out", default=RESULTS, help="folder for the JSON results")
    args = parser.parse_args(argv)
    missing = [tool for tool in ("wrk", "redis-benchmark") if not shutil.which(tool)]
    if missing:
        sys.stderr.write(f"bench: {', '.join(missing)} not found. {INSTALL}\n")
        return 2
    report = run(args.quick)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, time.strftime("%Y%m%d-%H%M%S") + ("-quick" if args.quick else "") + ".json")
    with open(path, "w") as out:
        json.dump(report, out, indent=2)
    sys.stdout.write(table(report) + f"\nJSON: {os.path.relpath(path, ROOT)}\n")  # the command's output
    return 0


if __name__ == "__main__":
    sys.exit(main())
