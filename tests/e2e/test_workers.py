"""HTTP_WORKERS > 1: pre-forked workers share the ports, the Redis and the cache; a dead worker
is replaced; SIGINT stops them all, and the Redis the parent started."""

import http.client
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from urllib.parse import quote

import psutil
import pytest
import redis

from load_env import load_settings
from proxy.process import workers as workers_module
from proxy.store.launcher import free_port
from servers import ROOT, refused, request, wait_until


def _python_children(parent: psutil.Process) -> Callable[[], list[psutil.Process]]:
    """A function listing the parent's live worker processes (not its redis-server)."""

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

    return python_children


@pytest.fixture
def start_workers(upstream, tmp_path):
    """The proxy started as a user would, with two workers, its own embedded Redis and the
    settings given; a function returning (process, port, resp port, log file, workers())."""
    started = []

    def start(**settings: str):
        port, resp_port = free_port(), free_port()
        log_file = tmp_path / "workers.log"
        env = {**os.environ, "HTTP_WORKERS": "2", "HTTP_PORT": str(port),
               "RESP_PORT": str(resp_port), "LOG_FILE": str(log_file),
               "UPSTREAM_ALLOW_PRIVATE": "true", "UPSTREAM_ALLOWED_PORTS": str(upstream.port),
               "REDIS_URL": "", "REDIS_HOST": "", **settings}
        process = subprocess.Popen([sys.executable, "http_server.py"], cwd=ROOT, env=env,
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE)
        started.append(process)
        python_children = _python_children(psutil.Process(process.pid))
        wait_until(lambda: len(python_children()) == 2 and not refused(port), timeout=20,
                   interval=0.05)
        return process, port, resp_port, log_file, python_children

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        process.stderr.close()


@pytest.fixture
def workers(start_workers):
    return start_workers()


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
    # Each worker logs once its front ends serve; the slower one may still be starting.
    wait_until(lambda: log_file.read_text().count("RESP on redis://") == 2, timeout=20)


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

def serve(settings, listeners, metrics_folder, ready):
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


# ----- one rate limit and one failed-authentication budget across the workers ---------------

def connections_to_both_workers(port: int, python_children) -> list[http.client.HTTPConnection]:
    """Kept-alive connections, opened until each of the two workers has accepted at least one
    (the kernel hands a new connection to whichever worker wins it)."""
    connections: list[http.client.HTTPConnection] = []
    workers = python_children()

    def accepted_by() -> list[int] | None:
        counts = []
        for worker in workers:
            counts.append(sum(1 for c in worker.net_connections(kind="tcp")
                              if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port))
        return counts if sum(counts) == len(connections) else None

    while len(connections) < 64:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.connect()
        connections.append(connection)
        counts = wait_until(accepted_by, timeout=10, interval=0.01)
        if len(connections) >= 4 and min(counts) >= 1:
            return connections
    raise AssertionError("64 connections and still one worker accepted none")


def statuses(connections: list[http.client.HTTPConnection], count: int, path: str,
             headers: dict[str, str] | None = None) -> list[tuple[int, bytes]]:
    """`count` requests, each on the next connection in turn; (status, body) of each."""
    answers = []
    for i in range(count):
        connection = connections[i % len(connections)]
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        answers.append((response.status, response.read()))
    return answers


def test_the_rate_limit_is_one_budget_across_the_workers(start_workers, upstream):
    # One token a hundred seconds: the test's own duration can never refill one.
    _process, port, _resp, _log, python_children = start_workers(RATE_LIMIT="0.01",
                                                                 RATE_LIMIT_BURST="5")
    url = upstream.serve("/limited", b"within the budget")
    connections = connections_to_both_workers(port, python_children)
    answers = statuses(connections, 20, f"/?url={quote(url, safe='')}&key=limited")
    for connection in connections:
        connection.close()
    assert [status for status, _ in answers] == [200] * 5 + [429] * 15
    assert {body for status, body in answers if status == 200} == {b"within the budget"}


def test_failed_authentications_are_one_budget_across_the_workers(start_workers):
    token = "workers-token-0123456789abcdef"
    _process, port, _resp, _log, python_children = start_workers(AUTH_TOKENS=token,
                                                                 AUTH_FAIL_LIMIT="3")
    connections = connections_to_both_workers(port, python_children)
    wrong = statuses(connections, 12, "/get/k", {"Authorization": "Bearer wrong-guess-000000"})
    right = statuses(connections, 2, "/get/k", {"Authorization": f"Bearer {token}"})
    for connection in connections:
        connection.close()
    assert [status for status, _ in wrong] == [401] * 3 + [429] * 9
    assert [status for status, _ in right] == [429, 429]  # the address is blocked, not the token


def test_the_start_logs_what_the_per_worker_limits_add_up_to(start_workers):
    _process, _port, _resp, log_file, _children = start_workers(MAX_CLIENTS="100",
                                                                MAX_PARALLEL="3")
    assert ("HTTP_WORKERS=2: at most 200 client connections to HTTP and 200 to RESP, and 6 "
            "requests in progress in all (MAX_CLIENTS=100 and MAX_PARALLEL=3 are per worker)"
            ) in log_file.read_text()


@pytest.mark.parametrize("resp_port,connections", [
    ("6380", "2048 client connections to HTTP and 2048 to RESP,"),
    ("0", "2048 client connections"),
])
def test_the_totals_are_the_per_worker_limits_times_the_workers(resp_port, connections):
    settings = load_settings({"HTTP_WORKERS": "2", "RESP_PORT": resp_port, "MAX_CLIENTS": "1024",
                              "MAX_PARALLEL": "4"}, env_file=None)
    assert workers_module.totals(settings) == (
        f"HTTP_WORKERS=2: at most {connections} and 8 requests in progress in all "
        "(MAX_CLIENTS=1024 and MAX_PARALLEL=4 are per worker)")
