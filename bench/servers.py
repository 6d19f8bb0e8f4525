"""The servers a bench run starts and stops, all on loopback: the ceiling (bench/ceiling.py),
nginx with `proxy_cache` (one worker, config in a temp dir), and the proxy as `make run` starts
it; each awaited until it serves (bounded) and stopped by its pid. And the two things asked of
a running server: one GET, and a process's resident memory."""

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VALUE_SIZE = 100  # bytes of every body and value on the hit paths


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

def get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        reply = conn.getresponse()
        return reply.status, reply.read()
    finally:
        conn.close()


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")
