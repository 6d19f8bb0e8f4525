"""HTTP_WORKERS > 1: pre-forked workers share the ports, the Redis and the cache; a dead worker
is replaced; SIGINT stops them all, and the Redis the parent started."""

import os
import signal
import subprocess
import sys
from urllib.parse import quote

import psutil
import pytest
import redis

from proxy.store.launcher import free_port
from servers import ROOT, refused, request, start_proxy, wait_until


@pytest.fixture
def workers(upstream, tmp_path):
    """The proxy started as a user would, with two workers and its own embedded Redis."""
    port, resp_port = free_port(), free_port()
    log_file = tmp_path / "workers.log"
    process = start_proxy({"HTTP_WORKERS": "2", "HTTP_PORT": str(port), "RESP_PORT": str(resp_port),
                           "LOG_FILE": str(log_file), "UPSTREAM_ALLOW_PRIVATE": "true",
                           "UPSTREAM_ALLOWED_PORTS": str(upstream.port), "REDIS_URL": "", "REDIS_HOST": ""},
                          stderr=subprocess.PIPE)
    parent = psutil.Process(process.pid)

    def python_children() -> list[psutil.Process]:
        found = []
        for child in parent.children():
            try:
                if child.status() != psutil.STATUS_ZOMBIE and "redis-server" not in " ".join(
                        child.cmdline()):
                    found.append(child)
            except psutil.Error:  # gone, or a zombie not yet reaped
                pass
        return found

    wait_until(lambda: len(python_children()) == 2 and not refused(port), timeout=20,
               interval=0.05)
    yield process, port, resp_port, log_file, python_children
    if process.poll() is None:
        process.kill()
        process.wait(10)
    process.stderr.close()


def test_workers_share_the_port_the_cache_and_the_fetches(workers, upstream):
    process, port, resp_port, log_file, python_children = workers
    url = upstream.serve("/w", b"served by a worker")
    path = f"/?url={quote(url, safe='')}&key=w"
    bodies = [request(port, path).body for _ in range(20)]
    assert bodies == [b"served by a worker"] * 20
    assert upstream.hits["/w"] == 1  # the other worker found it in the shared Redis
    client = redis.Redis(port=resp_port, protocol=2)  # RESP is served by the workers too
    assert client.get("nothing") is None and client.ping()
    client.close()
    # The second worker may still be starting (its Redis tracking armed) when the first has
    # served all of the above: wait, bounded, for its line.
    wait_until(lambda: log_file.read_text().count("RESP on redis://") == 2, timeout=10)


def test_a_dead_worker_is_replaced(workers):
    process, port, _resp_port, log_file, python_children = workers
    victim = python_children()[0].pid
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: len(python_children()) == 2 and victim not in
               [c.pid for c in python_children()], timeout=10, interval=0.05)
    wait_until(lambda: request(port, "/health").status == 200, timeout=10, interval=0.05)
    assert f"worker {victim} exited" in log_file.read_text()


def test_sigint_stops_every_worker_and_the_embedded_redis(workers):
    process, port, _resp_port, log_file, python_children = workers
    family = [c.pid for c in psutil.Process(process.pid).children()]
    assert len(family) == 3  # two workers and redis-server
    process.send_signal(signal.SIGINT)
    assert process.wait(15) == 0
    assert "Traceback" not in process.stderr.read().decode() + log_file.read_text()
    assert log_file.read_text().rstrip().endswith("stopped")
    wait_until(lambda: not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"
                               for pid in family), timeout=10)
    assert refused(port)


RACE = """
import os, signal, sys, threading
sys.path.insert(0, {root!r})
from proxy.process import workers
from load_env import load_settings

real_fork = os.fork
def fork_then_stop():  # a stop request lands just as the first worker is forked
    pid = real_fork()
    if pid:
        os.kill(os.getpid(), signal.SIGTERM)
    return pid
os.fork = fork_then_stop

def serve(settings, listeners, metrics_folder):
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait(30)
    return 0

settings = load_settings({{"HTTP_WORKERS": "3", "HTTP_PORT": "0", "RESP_PORT": "0",
                           "REDIS_URL": "redis://127.0.0.1:1/0"}}, env_file=None)
sys.exit(workers.supervise(settings, serve))
"""


def test_a_stop_during_the_fork_stops_the_worker_and_forks_no_more():
    done = subprocess.run([sys.executable, "-c", RACE.format(root=ROOT)], cwd=ROOT,
                          capture_output=True, text=True, timeout=20)
    # Without the signal mask the first worker is never told to stop and the parent waits on
    # it (30 s here): the run above would time out.
    assert done.returncode == 0, done.stderr
