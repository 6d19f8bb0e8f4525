"""`make bench`: the proxy's hit paths against the ceiling, in one run: a bare stdlib HTTP
server with the same body (HTTP) and Redis itself (RESP), measured with wrk and
redis-benchmark, everything on loopback and bounded in time; and, when nginx is installed,
nginx's `proxy_cache` (one worker) in front of the same origin, beside the reverse-proxy rows.

Figures are printed as a table with ratios and written as JSON under bench/results/; they are
never asserted: they depend on the machine. `--quick` runs every row for about a second with
tiny loads (the test suite runs it once, to check that every figure is reported).
"""

import argparse
import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import redis

from bench import cpu
from proxy.cache.entry import decode
from proxy.store.launcher import RedisServer, free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "results")
VALUE_SIZE = 100  # bytes of every body and value on the hit paths
BIG_VALUE = 64 * 1024  # the L1 memory row's values
SITE_ROW = "reverse proxy GET"  # ORIGIN_URL mode's rows (a path of the origin)
NGINX_ROW = "nginx proxy_cache, 1 worker, hit"
NO_NGINX = ("nginx not found: its proxy_cache row is skipped (on Debian or Ubuntu `apt-get install "
            "nginx-light`)")
INSTALL = ("wrk and redis-benchmark are needed: on Debian or Ubuntu `apt-get install wrk "
           "redis-tools`, on macOS `brew install wrk redis`")

# wrk Lua: each request's path is TEMPLATE with {i} replaced by a counter modulo KEYS (distinct
# keys in turn), or by a number no other request of the run uses (KEYS = 0: misses).
_LUA = """
local template, keys, threads, counter = "%s", %d, 0, 0
setup = function(thread) threads = threads + 1; thread:set("tid", threads) end
request = function()
  counter = counter + 1
  local i = keys > 0 and counter %% keys or tid * 100000000 + counter
  return wrk.format("GET", (template:gsub("{i}", tostring(i))))
end
"""


@contextlib.contextmanager
def process(argv: list[str], env: dict[str, str], port: int) -> Iterator[subprocess.Popen]:
    """A process of ours that serves on `port`: started, awaited (bounded), then stopped."""
    child = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, **env}, stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if child.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{' '.join(argv)} did not start serving on {port}") from None
                time.sleep(0.05)  # polling for readiness, bounded by the deadline
        yield child
    finally:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(15)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(5)


def ceiling(port: int) -> contextlib.AbstractContextManager[subprocess.Popen]:
    return process([sys.executable, "-m", "bench.ceiling", str(port), str(VALUE_SIZE)], {}, port)


# nginx with one worker caching the origin (`proxy_cache`), as a site would put it in front:
# the reference of the reverse-proxy mode. Everything under a temp dir; no access log.
_NGINX_CONF = """
worker_processes 1;
daemon off;
master_process on;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  proxy_cache_path {dir}/cache levels=1:2 keys_zone=bench:10m max_size=100m inactive=60m
                   use_temp_path=off;
  upstream origin {{ server 127.0.0.1:{origin}; keepalive 16; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_cache bench;
    }}
  }}
}}
"""


@contextlib.contextmanager
def nginx(port: int, origin_port: int) -> Iterator[subprocess.Popen]:
    """nginx (one worker, `proxy_cache`) on `port` in front of the origin; config, cache and
    pid file in a temp dir; stopped by its pid (SIGTERM: a fast shutdown) with the folder."""
    with tempfile.TemporaryDirectory(prefix="bench-nginx-") as folder:
        os.chmod(folder, 0o755)  # started as root, its worker runs as `nobody`: it must reach the cache
        conf = os.path.join(folder, "nginx.conf")
        with open(conf, "w") as out:
            out.write(_NGINX_CONF.format(dir=folder, origin=origin_port, port=port))
        with process(["nginx", "-p", folder, "-c", conf], {}, port) as child:
            yield child


def proxy(redis_url: str, port: int, origin_port: int, **settings: Any) -> contextlib.AbstractContextManager[
        subprocess.Popen]:
    """http_server.py as `make run` starts it (one worker unless told), on `redis_url`."""
    env = {"REDIS_URL": redis_url, "HTTP_PORT": str(port), "RESP_PORT": "0",
           "LOG_LEVEL": "warning", "UPSTREAM_ALLOW_PRIVATE": "true",
           "UPSTREAM_ALLOWED_PORTS": str(origin_port), "HTTP_WORKERS": "1"}
    env.update({name.upper(): str(value) for name, value in settings.items()})
    return process([sys.executable, "http_server.py"], env, port)


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(url: str, seconds: float, connections: int, template: str | None = None,
        keys: int = 0, pid: int | None = None) -> dict[str, Any]:
    """Requests/s, p50 and p99 (ms), socket errors and non-2xx answers that wrk measured.
    `template`: a path with {i}, requested with distinct keys (see _LUA). `pid`: the server's,
    whose CPU (with its workers') per request is added as `cpu_us`."""
    argv = ["wrk", "-t2", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency"]
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        if template is not None:
            script.write(_LUA % (template, keys))
            script.flush()
            argv += ["-s", script.name]
        cpu_before = cpu.tree_seconds(pid) if pid else 0.0
        done = subprocess.run(argv + [url], capture_output=True, text=True, timeout=seconds + 60,
                              check=True)
        cpu_used = cpu.tree_seconds(pid) - cpu_before if pid else 0.0
    out = done.stdout
    requests = re.search(r"(\d+) requests in", out)
    served = int(requests.group(1)) if requests else 0
    per_request = {"cpu_us": round(cpu_used / served * 1e6, 1)} if pid and served else {}
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
            "p50_ms": _ms(re.search(r"\s50%\s+(\S+)", out).group(1)),  # type: ignore[union-attr]
            "p99_ms": _ms(re.search(r"\s99%\s+(\S+)", out).group(1)),  # type: ignore[union-attr]
            "errors": sum(int(n) for n in errors.groups()) if errors else 0,
            "non_2xx": int(non_2xx.group(1)) if non_2xx else 0, **per_request}


def redis_benchmark(port: int, requests: int, pipeline: int = 1,
                    pid: int | None = None) -> dict[str, Any]:
    """GET requests/s that redis-benchmark measured against `port` (50 clients). Every request
    reads the one key `key:__rand_int__` (-r is not given), so an L1 holds it. `pid`: the
    server's, whose CPU per command is added as `cpu_us`."""
    cpu_before = cpu.tree_seconds(pid) if pid else 0.0
    done = subprocess.run(["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-t", "get",
                           "-n", str(requests), "-P", str(pipeline), "-q", "--csv"],
                          capture_output=True, text=True, timeout=300, check=True)
    per_command = {"cpu_us": round((cpu.tree_seconds(pid) - cpu_before) / requests * 1e6, 2)} \
        if pid else {}
    for line in done.stdout.splitlines():
        fields = [f.strip('"') for f in line.split(",")]
        if fields and fields[0].startswith("GET"):
            return {"rps": float(fields[1]), "p50_ms": float(fields[4]) if len(fields) > 4 else None,
                    "p99_ms": float(fields[6]) if len(fields) > 6 else None, **per_command}
    raise RuntimeError(f"no GET figure in redis-benchmark output: {done.stdout!r}")


def _get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        reply = conn.getresponse()
        return reply.status, reply.read()
    finally:
        conn.close()


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


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
            status, _ = _get(http_port, hit_paths["/?url=&key="])  # fetch once: the rest hit
            assert status == 200, status
            for route, path in hit_paths.items():
                _get(http_port, path)  # into L1
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
            memory.update(_entry_memory(client, http_port, url_of))
        _site_rows(store.url, origin, origin_port, keys, measure, rows, seconds, conns)
        no_l1_port = free_port()
        with proxy(store.url, no_l1_port, origin_port, cache_capacity=0, l1_invalidation="ttl") as child:
            for i in range(keys):  # the URL role's entries, one per key, stored once
                _get(no_l1_port, f"/?url={url_of(f'/page/{i}')}&key=bench:{i}")
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
        memory.update(_l1_memory(client, store.url, origin_port, 200 if quick else 2000,
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
            status, _ = _get(site_port, "/site")
            assert status == 200, status
        measure(f"{SITE_ROW}, L1 hit", site_port, "/site", "l1", pid=child.pid)
        measure(f"{SITE_ROW}, miss (upstream fetch and store)", site_port, "/site-miss/{i}", "miss",
                distinct=True, pid=child.pid)
    no_l1_port = free_port()
    with proxy(redis_url, no_l1_port, origin_port, origin_url=origin, cache_capacity=0,
               l1_invalidation="ttl") as child:
        for i in range(keys):  # one entry per path, stored once
            _get(no_l1_port, f"/site/{i}")
        measure(f"{SITE_ROW}, Redis hit (L1 off, distinct paths)", no_l1_port, "/site/{i}", "redis",
                distinct=True, keys=keys, pid=child.pid)
    if not shutil.which("nginx"):
        return
    nginx_port = free_port()
    with nginx(nginx_port, origin_port) as server:
        for _ in range(2):  # stored, then a hit
            status, _ = _get(nginx_port, "/site")
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


def _entry_memory(client: redis.Redis, http_port: int, url_of: Any) -> dict[str, Any]:
    """MEMORY USAGE of the stored entry of a 100-byte body (`rp:bench`, the one the hit rows
    read: the same key every run, as a key's length counts) against the body and kept headers;
    and Redis's own share: MEMORY USAGE of a key of the same length holding exactly the body."""
    key = b"rp:bench"
    raw = client.get(key) or b""
    entry = decode(raw)
    if entry is None:
        raise RuntimeError("no stored entry to measure")
    kept = sum(len(name) + len(value) for name, value in entry.headers.items())
    usage = int(client.memory_usage(key, samples=0) or 0)
    bare = b"~" + key[1:]
    client.set(bare, entry.body)
    per_key = int(client.memory_usage(bare, samples=0) or 0) - len(entry.body)
    client.delete(bare)
    return {"entry_key": key.decode(), "entry_memory_usage": usage, "entry_body_bytes": len(entry.body),
            "entry_kept_header_bytes": kept, "entry_value_bytes": len(raw),
            "entry_metadata_bytes": len(raw) - len(entry.body),
            "entry_overhead_bytes": usage - len(entry.body) - kept, "entry_redis_key_bytes": per_key}


def _l1_memory(client: redis.Redis, redis_url: str, origin_port: int, values: int,
               max_bytes: int) -> dict[str, Any]:
    """The proxy's RSS while a stream of distinct 64 KiB values passes through its L1, which
    CACHE_MAX_BYTES bounds."""
    for start in range(0, values, 100):
        client.mset({f"big:{i}": os.urandom(BIG_VALUE) for i in range(start, min(values, start + 100))})
    port = free_port()
    with proxy(redis_url, port, origin_port, cache_max_bytes=max_bytes, cache_capacity=100_000) as child:
        _get(port, "/get/bench")
        before = _rss(child.pid)
        peak = before
        for i in range(values):
            status, body = _get(port, f"/get/big:{i}")
            assert status == 200 and len(body) == BIG_VALUE
            if i % 50 == 0:
                peak = max(peak, _rss(child.pid))
        after = _rss(child.pid)
    client.delete(*[f"big:{i}" for i in range(values)])
    return {"l1_values_streamed": values, "l1_value_bytes": BIG_VALUE, "l1_cache_max_bytes": max_bytes,
            "rss_before_bytes": before, "rss_peak_bytes": max(peak, after), "rss_after_bytes": after,
            "rss_growth_bytes": max(peak, after) - before}


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
