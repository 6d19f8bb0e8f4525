"""Redis MEMORY USAGE of a 100 KiB HTML and JSON body stored plain and compressed, and the hit
throughput for clients that accept zstd and for those that do not (one keep-alive client,
sequential, L1 on and off). Run from the repository: `.venv/bin/python docs/compression_memory.py`.
Figures are printed, never asserted: they depend on the machine."""

import http.client
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import redis  # noqa: E402

import http_server  # noqa: E402
from proxy.cache.freshness import Policy  # noqa: E402
from proxy.cache.local_cache import LocalCache  # noqa: E402
from proxy.store.connection import make_client  # noqa: E402
from proxy.store.launcher import RedisServer  # noqa: E402
from proxy.upstream.fetcher import Fetcher  # noqa: E402
from proxy.upstream.policy import UpstreamPolicy  # noqa: E402
from redis_proxy import RedisProxy  # noqa: E402

HTML = b"".join(b"<li class='item'><a href='/item/%d'>Item number %d</a> in stock: %d</li>\n"
                % (i, i, i % 7) for i in range(1400))[:100 * 1024]
JSON = json.dumps([{"id": i, "name": f"user {i}", "active": i % 3 == 0, "tags": ["a", "b"]}
                   for i in range(1500)]).encode()[:100 * 1024]
BODIES = {"/page.html": (HTML, "text/html"), "/data.json": (JSON, "application/json")}


class Origin(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802
        body, content_type = BODIES[self.path]
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def hits_per_second(port: int, path: str, accept: str | None, seconds: float = 3.0) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port)
    headers = {"Accept-Encoding": accept} if accept else {}
    count, ends = 0, time.monotonic() + seconds
    while time.monotonic() < ends:
        conn.request("GET", path, headers=headers)
        conn.getresponse().read()
        count += 1
    conn.close()
    return count / seconds


def main() -> None:
    origin = ThreadingHTTPServer(("127.0.0.1", 0), Origin)
    threading.Thread(target=origin.serve_forever, daemon=True).start()
    with RedisServer(unix_socket=True) as server:
        client = redis.Redis.from_url(server.url)
        out = [f"{'body':<10} {'plain B':>9} {'zstd B':>8} {'ratio':>6}"]
        rows = []
        for capacity in (1024, 0):
            for compress in (0, 1024):
                fetcher = Fetcher(policy=UpstreamPolicy(allow_private=True,
                                                        allowed_ports=(origin.server_port,)))
                proxy = RedisProxy(make_client(server.url), fetcher, LocalCache(capacity=capacity),
                                   policy=Policy(ttl=3600), compress_min_bytes=compress,
                                   prefix=f"c{compress}:")
                front = http_server.make_server("127.0.0.1", 0, proxy, max_parallel=8)
                threading.Thread(target=front.serve_forever, daemon=True).start()
                for name in BODIES:
                    url = quote(f"http://127.0.0.1:{origin.server_port}{name}", safe="")
                    path = f"/?url={url}&key={name.strip('/')}"
                    http_server_port = front.server_address[1]
                    hits_per_second(http_server_port, path, None, 0.1)  # the miss, then warm
                    for accept in ("zstd", None):
                        rows.append((capacity > 0, compress > 0, name, accept,
                                     hits_per_second(http_server_port, path, accept)))
                front.shutdown()
                front.server_close()
                proxy.close()
        for name in BODIES:
            plain_key, packed_key = f"c0:{name.strip('/')}", f"c1024:{name.strip('/')}"
            plain, packed = client.memory_usage(plain_key), client.memory_usage(packed_key)
            out.append(f"{name:<10} {plain:>9} {packed:>8} {plain / packed:>5.1f}x  (STRLEN "
                       f"{client.strlen(plain_key)} vs {client.strlen(packed_key)})")
        out.append(f"\n{'L1':<4} {'stored':<7} {'body':<11} {'Accept-Encoding':<16} {'hits/s':>8}")
        out += [f"{'on' if l1 else 'off':<4} {'zstd' if compressed else 'plain':<7} {name:<11} "
                f"{accept or '(none)':<16} {rate:>8.0f}" for l1, compressed, name, accept, rate in rows]
        sys.stdout.write("\n".join(out) + "\n")  # the command's output
        client.close()
    origin.shutdown()


if __name__ == "__main__":
    main()
