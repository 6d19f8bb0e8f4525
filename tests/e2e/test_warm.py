"""Warm-up (issue 11): `http_server.py warm FILE` (what `make warm` and `redis-proxy warm` run)
fetches a list of URLs through the proxy core into the test's Redis, from a real upstream."""

import fcntl
import io
import os
import pty
import socket
import struct
import subprocess
import sys
import termios
import threading

import pytest

from proxy.process import warm
from proxy.store.launcher import free_port
from servers import ROOT, wait_until

COUNT = 50


def run_warm(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "http_server.py", "warm", *args], cwd=ROOT,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


@pytest.fixture
def site(upstream):
    """COUNT pages, the i-th of i + 1 bytes."""
    for i in range(COUNT):
        upstream.serve(f"/page{i}", b"w" * (i + 1), headers={"Cache-Control": "max-age=600"})
    return upstream


def env_for(redis_url: str, upstream) -> dict[str, str]:
    return {"REDIS_URL": redis_url, "UPSTREAM_ALLOW_PRIVATE": "true",
            "UPSTREAM_ALLOWED_PORTS": str(upstream.port), "LOG_LEVEL": "warning"}


def test_fifty_urls_are_stored_and_a_bad_line_is_reported_and_skipped(site, redis_url, r, tmp_path):
    lines = ["# pages to warm", ""] + [f"{site.url(f'/page{i}')} k{i}" for i in range(COUNT)]
    lines.insert(5, "http://127.0.0.1/a key extra-field")  # line 6: three fields
    urls = tmp_path / "urls.txt"
    urls.write_text("\n".join(lines) + "\n")

    done = run_warm(str(urls), "--concurrency", "4", env=env_for(redis_url, site))

    assert done.returncode == 1, done.stderr  # a line was skipped
    assert done.stdout == (f"warm-up: {COUNT} stored, 0 already fresh, 0 not stored, 0 refused, "
                           f"0 failed; {COUNT * (COUNT + 1) // 2} bytes stored; 1 bad line skipped\n")
    assert "line 6: bad line, skipped: expected '<url>' or '<url> <key>', found 3 fields\n" in done.stderr
    assert "%|" not in done.stderr  # no progress bar: stderr is not a terminal
    assert r.exists(*[f"rp:k{i}" for i in range(COUNT)]) == COUNT
    assert all(site.hits[f"/page{i}"] == 1 for i in range(COUNT))
    assert 600 - 5 <= r.ttl("rp:k0") <= 600 + 300  # max-age plus the default CACHE_STALE_TTL

    again = run_warm(str(urls), env=env_for(redis_url, site))

    assert again.stdout.startswith(f"warm-up: 0 stored, {COUNT} already fresh, ")
    assert all(site.hits[f"/page{i}"] == 1 for i in range(COUNT))  # nothing fetched again


def test_refused_failed_and_unstorable_urls_are_counted_apart(site, redis_url, r, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]  # allowed, but nothing listens there
    site.serve("/private", b"no", headers={"Cache-Control": "no-store"})
    urls = tmp_path / "urls.txt"
    urls.write_text(f"{site.url('/page1')}\n"
                    f"http://127.0.0.1:{closed}/down\n"
                    f"{site.url('/private')} private\n"
                    f"http://127.0.0.1:{closed + 1}/other-port\n"  # not in UPSTREAM_ALLOWED_PORTS
                    f"{site.url('/missing')}\n"
                    "ftp://127.0.0.1/file\n")
    env = {**env_for(redis_url, site), "UPSTREAM_ALLOWED_PORTS": f"{site.port},{closed}"}

    done = run_warm(str(urls), env=env)

    assert done.returncode == 1
    assert done.stdout == ("warm-up: 1 stored, 0 already fresh, 2 not stored, 1 refused, 1 failed; "
                           "2 bytes stored; 1 bad line skipped\n")
    assert f"line 2: http://127.0.0.1:{closed}/down: failed: connection refused by 127.0.0.1:{closed}\n" \
        in done.stderr
    assert f"line 4: http://127.0.0.1:{closed + 1}/other-port: refused: port {closed + 1} refused" \
        in done.stderr
    assert f"line 5: {site.url('/missing')}: not stored: upstream answered 404" in done.stderr
    assert "line 6: bad line, skipped: url must be an absolute http:// or https:// URL\n" in done.stderr
    assert r.exists("rp:private") == 0


def test_warm_without_a_configured_redis_stops_with_2(tmp_path):
    urls = tmp_path / "urls.txt"
    urls.write_text("http://127.0.0.1/\n")
    done = run_warm(str(urls), env={"REDIS_URL": "", "REDIS_HOST": ""})
    assert done.returncode == 2
    assert "set REDIS_URL" in done.stderr


def test_warm_with_redis_down_exits_1_naming_it_and_fetches_nothing(site, tmp_path):
    urls = tmp_path / "urls.txt"
    urls.write_text(f"{site.url('/page0')} k0\n")
    down = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there

    done = run_warm(str(urls), env=env_for(down, site))

    assert done.returncode == 1 and done.stdout == ""
    assert (f"redis-proxy warm: Redis does not answer at {down}; nothing was fetched or stored "
            "(start it, or check REDIS_URL)\n") in done.stderr
    assert site.hits["/page0"] == 0


def test_an_unreadable_file_and_a_bad_concurrency_stop_with_2(redis_url, tmp_path):
    missing = run_warm(str(tmp_path / "nope.txt"), env={"REDIS_URL": redis_url})
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    bad = run_warm(str(tmp_path / "nope.txt"), "--concurrency", "0", env={"REDIS_URL": redis_url})
    assert bad.returncode == 2 and "expected an integer from 1 to 256" in bad.stderr


def test_warm_help_lists_the_file_concurrency_and_the_settings():
    done = subprocess.run([sys.executable, "http_server.py", "warm", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0
    assert "FILE [--concurrency N]" in done.stdout and "--redis-url" in done.stdout


class FakeResult:
    def __init__(self, size: int):
        self.cache, self.forward, self.stored, self.detail = "MISS", "miss", True, ""
        self.body, self.status = b"x" * size, 200


class FakeProxy:
    def fetch(self, url: str, key: str | None = None) -> FakeResult:
        return FakeResult(int(url.rsplit("/", 1)[1]))


class RedisLostProxy:
    """Redis went away during the warm-up: the fetch is answered, not stored (X-Cache BYPASS)."""

    def fetch(self, url: str, key: str | None = None) -> FakeResult:
        result = FakeResult(3)
        result.cache, result.stored = "BYPASS", False
        return result


def test_a_url_fetched_while_redis_is_unreachable_counts_as_failed():
    errors = io.StringIO()
    summary = warm.warm(RedisLostProxy(), ["http://127.0.0.1:1/a k\n"], errors=errors)
    assert (summary.counts[warm.FAILED], summary.counts[warm.NOT_STORED], summary.ok) == (1, 0, False)
    assert errors.getvalue() == ("line 1: http://127.0.0.1:1/a: failed: Redis could not be reached: "
                                 "fetched but not stored\n")


def test_the_progress_bar_counts_every_url_when_asked_for():
    bar = io.StringIO()
    summary = warm.warm(FakeProxy(), [f"http://h/{i}" for i in range(1, 11)], errors=bar,
                        progress=True)
    assert summary.counts[warm.STORED] == 10 and summary.bytes == 55
    assert "10/10" in bar.getvalue()
    quiet = io.StringIO()
    warm.warm(FakeProxy(), ["http://h/1"], errors=quiet, progress=False)
    assert quiet.getvalue() == ""


def test_on_a_terminal_the_progress_bar_is_shown(site, redis_url, tmp_path):
    urls = tmp_path / "urls.txt"
    urls.write_text("".join(f"{site.url(f'/page{i}')}\n" for i in range(5)))
    master, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    process = subprocess.Popen([sys.executable, "http_server.py", "warm", str(urls)], cwd=ROOT,
                               env={**os.environ, **env_for(redis_url, site)},
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=terminal)
    os.close(terminal)
    shown = b""
    while True:  # until the process closes its end of the terminal
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: no writer left
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    summary = process.stdout.read()
    process.stdout.close()
    assert process.wait(30) == 0
    assert b"100%|" in shown and b"5/5" in shown
    assert summary.startswith(b"warm-up: 5 stored, ")


def test_warm_over_max_fetches_fetches_that_many_at_once_and_none_is_refused(make_proxy, upstream):
    """With a concurrency over MAX_FETCHES, the fetches beyond it would find no slot (here at
    once: fetch_wait 0) while the origin holds the first ones; lowered to MAX_FETCHES, none is."""
    release, lock = threading.Event(), threading.Lock()
    in_flight, most = [0], [0]

    def held(handler) -> None:
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        release.wait(30)
        with lock:
            in_flight[0] -= 1
        handler.reply(200, b"held", {"Cache-Control": "max-age=600"})

    urls = [upstream.route(f"/held{i}", held) for i in range(8)]
    proxy = make_proxy(fetcher_options={"max_fetches": 2, "fetch_wait": 0})
    errors, done = io.StringIO(), []
    warming = threading.Thread(target=lambda: done.append(warm.warm(
        proxy.proxy, urls, concurrency=8, errors=errors, max_fetches=2)), daemon=True)
    warming.start()
    try:
        wait_until(lambda: in_flight[0] == 2)  # MAX_FETCHES held by the origin
    finally:
        release.set()
    warming.join(30)

    (summary,) = done
    assert (summary.counts[warm.STORED], summary.counts[warm.FAILED]) == (8, 0)
    assert (proxy.proxy.fetcher.fetches_refused, most[0]) == (0, 2)
    assert errors.getvalue() == "warm-up: --concurrency 8 is more than MAX_FETCHES (2): 2 fetches at once\n"


def test_warm_notes_a_concurrency_over_max_fetches_and_stores_every_url(site, redis_url, r, tmp_path):
    urls = tmp_path / "urls.txt"
    urls.write_text("".join(f"{site.url(f'/page{i}')} k{i}\n" for i in range(8)))

    done = run_warm(str(urls), "--concurrency", "8", env={**env_for(redis_url, site), "MAX_FETCHES": "4"})

    assert done.returncode == 0, done.stderr
    assert done.stderr == "warm-up: --concurrency 8 is more than MAX_FETCHES (4): 4 fetches at once\n"
    assert done.stdout.startswith("warm-up: 8 stored, 0 already fresh, ")
    assert r.exists(*[f"rp:k{i}" for i in range(8)]) == 8
    at_most = run_warm(str(urls), "--concurrency", "4", env={**env_for(redis_url, site), "MAX_FETCHES": "4"})
    assert (at_most.returncode, at_most.stderr) == (0, "")  # no note when within it
