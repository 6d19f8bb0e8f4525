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
