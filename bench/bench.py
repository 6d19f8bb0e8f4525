"""`make bench`: requests/s of the proxy's hit paths, measured in one run with wrk and
redis-benchmark against a throw-away Redis and a local upstream, all on loopback.

Figures are printed as a table with ratios, never asserted: they depend on the machine.
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote

import redis

import http_server
from proxy.cache.freshness import Policy
from proxy.cache.local_cache import LocalCache
from proxy.resp import server as resp_server
from proxy.store.connection import make_client
from proxy.store.launcher import RedisServer, free_port
from proxy.upstream.fetcher import Fetcher
from proxy.upstream.policy import UpstreamPolicy
from redis_proxy import RedisProxy

BODY = b"x" * 1024


class _Origin(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args: object) -> None:
        pass


def _serve(server) -> threading.Thread:  # type: ignore[no-untyped-def]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return thread


def _proxy(redis_url: str, capacity: int, invalidation: str, upstream_port: int):  # type: ignore[no-untyped-def]
    fetcher = Fetcher(policy=UpstreamPolicy(allow_private=True, allowed_ports=(upstream_port,)))
    proxy = RedisProxy(make_client(redis_url), fetcher, LocalCache(capacity=capacity),
                       policy=Policy(ttl=3600), invalidation=invalidation)
    servers = [http_server.make_server("127.0.0.1", 0, proxy, max_parallel=64),
               resp_server.make_server("127.0.0.1", 0, proxy, max_parallel=64)]
    for server in servers:
        _serve(server)
    return proxy, servers


def _workers(redis_url: str, count: int) -> tuple[subprocess.Popen, int]:
    """The proxy as `make run` starts it, with `count` pre-forked workers, on `redis_url`."""
    port = free_port()
    env = {**os.environ, "REDIS_URL": redis_url, "HTTP_PORT": str(port), "RESP_PORT": "0",
           "HTTP_WORKERS": str(count), "LOG_LEVEL": "warning"}
    process = subprocess.Popen([sys.executable, "http_server.py"], env=env,
                               cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process, port
        except OSError:
            time.sleep(0.05)  # polling for readiness, bounded by the deadline
    process.kill()
    raise RuntimeError("the worker processes did not start within 20 s")


def wrk(url: str, seconds: int, connections: int) -> float | None:
    """Requests/s that wrk measured, or None without wrk."""
    if not shutil.which("wrk"):
        return None
    done = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", url],
                          capture_output=True, text=True, timeout=seconds + 30, check=True)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", done.stdout)
    if errors:
        raise RuntimeError(f"wrk saw {errors.group(1)} error responses from {url}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", done.stdout).group(1))  # type: ignore[union-attr]


def redis_benchmark(port: int, requests: int, connections: int) -> float | None:
    """GET requests/s that redis-benchmark measured against `port`, or None without it.
    Every request reads the one key `key:__rand_int__` (-r is not given), so an L1 holds it."""
    if not shutil.which("redis-benchmark"):
        return None
    done = subprocess.run(["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-t", "get",
                           "-n", str(requests), "-c", str(connections), "-q", "--csv"],
                          capture_output=True, text=True, timeout=300, check=True)
    for line in done.stdout.splitlines():
        fields = [f.strip('"') for f in line.split(",")]
        if fields and fields[0].startswith("GET"):
            return float(fields[1])
    raise RuntimeError(f"no GET figure in redis-benchmark output: {done.stdout!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5, help="length of each wrk run")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)

    origin = ThreadingHTTPServer(("127.0.0.1", 0), _Origin)
    origin.daemon_threads = True
    _serve(origin)
    upstream_url = f"http://127.0.0.1:{origin.server_address[1]}/page"
    results: dict[str, float | None] = {}
    with RedisServer() as store:
        client = redis.Redis.from_url(store.url)
        client.set("bench", BODY)
        client.set("key:__rand_int__", BODY)  # the key redis-benchmark -t get reads without -r
        with_l1, (with_l1_http, with_l1_resp) = _proxy(store.url, 1024, "tracking",
                                                       origin.server_address[1])
        no_l1, (no_l1_http, no_l1_resp) = _proxy(store.url, 0, "ttl", origin.server_address[1])
        base = f"http://127.0.0.1:{with_l1_http.server_address[1]}"
        base_no_l1 = f"http://127.0.0.1:{no_l1_http.server_address[1]}"
        url_path = f"/?url={quote(upstream_url, safe='')}&key=bench"
        with_l1.redis_get(upstream_url, key="bench")  # warm: the runs below are all hits
        results["redis-benchmark GET, Redis itself"] = redis_benchmark(
            store.port, 100_000, args.connections)
        results["RESP GET, L1 hit"] = redis_benchmark(with_l1_resp.server_address[1], 50_000,
                                                      args.connections)
        results["RESP GET, no L1 (Redis GET)"] = redis_benchmark(no_l1_resp.server_address[1],
                                                                 50_000, args.connections)
        results["GET /health (HTTP floor, Redis PING)"] = wrk(base + "/health", args.seconds,
                                                              args.connections)
        results["GET /get/<key>, L1 hit"] = wrk(base + "/get/bench", args.seconds, args.connections)
        results["GET /get/<key>, no L1 (Redis GET)"] = wrk(base_no_l1 + "/get/bench", args.seconds,
                                                           args.connections)
        results["GET /?url=&key=, L1 hit"] = wrk(base + url_path, args.seconds, args.connections)
        results["GET /?url=&key=, no L1 (Redis hit)"] = wrk(base_no_l1 + url_path, args.seconds,
                                                            args.connections)
        for count in (1, 2):
            process, port = _workers(store.url, count)
            try:
                wrk(f"http://127.0.0.1:{port}/get/bench", 1, args.connections)  # warm the L1s
                results[f"GET /get/<key>, L1 hit, own process, HTTP_WORKERS={count}"] = wrk(
                    f"http://127.0.0.1:{port}/get/bench", args.seconds, args.connections)
            finally:
                process.send_signal(signal.SIGTERM)
                process.wait(15)
        for proxy, servers in ((with_l1, (with_l1_http, with_l1_resp)),
                               (no_l1, (no_l1_http, no_l1_resp))):
            for server in servers:
                server.shutdown()
                server.server_close()
            proxy.close()
        client.close()
    origin.shutdown()
    origin.server_close()

    if args.json:
        sys.stdout.write(json.dumps(results, indent=2) + "\n")  # the command's output
        return 0
    reference = results.get("redis-benchmark GET, Redis itself")
    lines = [f"{'path':58} {'requests/s':>12} {'vs Redis':>9}"]
    for name, value in results.items():
        shown = "n/a (tool absent)" if value is None else f"{value:12,.0f}"
        ratio = f"{value / reference:9.3f}" if value and reference else ""
        lines.append(f"{name:58} {shown:>12} {ratio}")
    sys.stdout.write("\n".join(lines) + "\n")  # the report is the command's output, not a log
    return 0


if __name__ == "__main__":
    sys.exit(main())
