"""`make run` as a user runs it: serves, honours the environment over .env, stops on Ctrl-C."""

import os
import re
import shutil
import signal
import subprocess

import pytest

from proxy.store.launcher import free_port
from servers import ROOT, q, refused, request, wait_until

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")




def test_make_run_serves_and_stops_cleanly_on_sigint(upstream, tmp_path):
    url = upstream.serve("/run", b"served by make run")
    port = free_port()
    log_file = tmp_path / "run.log"
    env = {**os.environ, "HTTP_PORT": str(port), "RESP_PORT": "0", "LOG_FILE": str(log_file),
           "UPSTREAM_ALLOW_PRIVATE": "true", "UPSTREAM_ALLOWED_PORTS": str(upstream.port),
           "REDIS_URL": "", "REDIS_HOST": ""}
    # Its own session, so SIGINT to the group is what Ctrl-C in a terminal sends.
    process = subprocess.Popen(["make", "--no-print-directory", "run"], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               start_new_session=True)
    try:
        # HTTP_PORT from the environment, over the .env file (which sets nothing).
        wait_until(lambda: not refused(port), timeout=30, interval=0.1)
        path = q(url, "run")
        first, second = request(port, path), request(port, path)
        assert (first.headers["X-Cache"], second.headers["X-Cache"]) == ("MISS", "HIT")
        assert first.body == second.body == b"served by make run"
        assert upstream.hits["/run"] == 1
        embedded = re.search(r"embedded redis-server at redis://127\.0\.0\.1:(\d+)",
                             log_file.read_text())
        assert embedded, log_file.read_text()
        redis_port = int(embedded.group(1))
        assert not refused(redis_port)
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            code = process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            raise
    stderr = process.stderr.read().decode()
    process.stderr.close()
    # make re-raises the SIGINT its child got (a terminal shows "Interrupt"); the proxy itself
    # must have taken its clean stop path.
    assert code in (0, -signal.SIGINT), stderr
    assert "Traceback" not in stderr and "Traceback" not in log_file.read_text()
    assert "received SIGINT, stopping" in log_file.read_text()
    assert log_file.read_text().rstrip().endswith("stopped")
    assert refused(port)
    wait_until(lambda: refused(redis_port), timeout=5)  # the Redis it started is gone too


def make(target: str, run_dir, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", target, f"RUN={run_dir}"], cwd=ROOT,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=60)


def test_a_second_redis_start_and_http_start_are_refused_and_shutdown_stops_the_first(tmp_path):
    run_dir = tmp_path / "run"
    redis_port, http_port = free_port(), free_port()
    env = {"REDIS_PORT": str(redis_port), "HTTP_PORT": str(http_port), "RESP_PORT": "0",
           "REDIS_URL": "", "REDIS_HOST": ""}
    try:
        assert make("redis_start", run_dir, **env).returncode == 0
        redis_pid = (run_dir / "redis.pid").read_text()
        again = make("redis_start", run_dir, **env)
        assert again.returncode != 0
        assert f"redis is already running (pid {redis_pid.strip()}); run make shutdown first" in again.stderr
        assert (run_dir / "redis.pid").read_text() == redis_pid  # the first one's pid kept

        assert make("http_start", run_dir, **env).returncode == 0
        http_pid = (run_dir / "http.pid").read_text()
        wait_until(lambda: not refused(http_port), timeout=30)
        assert request(http_port, "/health").status == 200  # on the Redis of run/redis.url
        again = make("http_start", run_dir, **env)
        assert again.returncode != 0
        assert f"the http server is already running (pid {http_pid.strip()}); run make shutdown first" \
            in again.stderr
        assert (run_dir / "http.pid").read_text() == http_pid
    finally:
        assert make("shutdown", run_dir).returncode == 0
    assert refused(http_port) and refused(redis_port)
    assert not (run_dir / "http.pid").exists() and not (run_dir / "redis.pid").exists()


def test_make_warm_fills_the_redis_that_redis_start_started(upstream, tmp_path):
    run_dir = tmp_path / "run"
    url = upstream.serve("/warm-me", b"warmed")
    urls = tmp_path / "urls.txt"
    urls.write_text(f"{url} made-warm\n")
    env = {"REDIS_PORT": str(free_port()), "REDIS_URL": "", "REDIS_HOST": ""}
    try:
        assert make("redis_start", run_dir, **env).returncode == 0
        done = subprocess.run(["make", "--no-print-directory", "warm", f"RUN={run_dir}", f"FILE={urls}"],
                              cwd=ROOT, capture_output=True, text=True, timeout=60,
                              env={**os.environ, **env, "UPSTREAM_ALLOW_PRIVATE": "true",
                                   "UPSTREAM_ALLOWED_PORTS": str(upstream.port)})
        assert done.returncode == 0, done.stderr
        assert "warm-up: 1 stored," in done.stdout
        assert upstream.hits["/warm-me"] == 1
    finally:
        assert make("shutdown", run_dir).returncode == 0
