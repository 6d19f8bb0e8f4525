"""SIGHUP reloads the configuration (CONTRACT §10): `.env` and the tokens read again, a bad new
configuration refused with its reason logged and the old one kept, the workers replaced one at a
time on the same listening sockets; the rules file (RULES_FILE) read again with them."""

import os
import re
import shutil
import signal
import subprocess
import sys

import pytest

from proxy.store.launcher import free_port
from servers import ROOT, q, refused, request, wait_until

TOKEN_A, TOKEN_B = "reload-token-aaaaaaaaaaaa", "reload-token-bbbbbbbbbbbb"


class Running:
    """The proxy as a process in `folder` (its .env there), HTTP_WORKERS=2."""

    def __init__(self, folder, redis_url: str, env_text: str):
        self.folder, self.port = folder, free_port()
        self.log = folder / "proxy.log"
        self.write_env(env_text)
        env = {**os.environ, "REDIS_URL": redis_url, "LOG_FILE": str(self.log), "HTTP_WORKERS": "2"}
        for name in ("AUTH_TOKENS", "CACHE_TTL", "HTTP_PORT", "RESP_PORT", "AUTH_FAIL_LIMIT"):
            env.pop(name, None)  # from .env alone
        self.process = subprocess.Popen([sys.executable, os.path.join(ROOT, "http_server.py")],
                                        cwd=folder, env=env, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        wait_until(lambda: not refused(self.port) or self.process.poll() is not None, timeout=30)

    def write_env(self, text: str, port: int | None = None) -> None:
        (self.folder / ".env").write_text(f"HTTP_PORT={port or self.port}\nRESP_PORT=0\n"
                                          f"AUTH_FAIL_LIMIT=0\n{text}")

    def hang_up_and_wait_for(self, line: str) -> None:
        self.process.send_signal(signal.SIGHUP)
        wait_until(lambda: line in self.log.read_text(), timeout=30, interval=0.05)

    def status_with(self, token: str) -> int:
        return request(self.port, "/get/k", headers={"Authorization": f"Bearer {token}"}).status

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=20)


@pytest.fixture
def running(tmp_path, redis_url, r):
    r.set("k", b"v")
    started = []

    def start(env_text: str) -> Running:
        started.append(Running(tmp_path, redis_url, env_text))
        return started[-1]

    yield start
    for proxy in started:
        assert proxy.stop() == 0


def test_sighup_takes_new_tokens_from_env_and_drops_the_old_ones(running):
    proxy = running(f"AUTH_TOKENS={TOKEN_A}\n")
    assert (proxy.status_with(TOKEN_A), proxy.status_with(TOKEN_B)) == (200, 401)

    proxy.write_env(f"AUTH_TOKENS={TOKEN_B}\n")
    proxy.hang_up_and_wait_for("reloaded: 2 workers on the new configuration")

    # Every worker now is one on the new configuration: no answer from an old one.
    assert {proxy.status_with(TOKEN_B) for _ in range(20)} == {200}
    assert {proxy.status_with(TOKEN_A) for _ in range(20)} == {401}


def test_a_bad_new_configuration_is_refused_with_its_reason_and_the_old_one_kept(running):
    proxy = running(f"AUTH_TOKENS={TOKEN_A}\n")
    proxy.write_env(f"AUTH_TOKENS={TOKEN_B}\nCACHE_TTL=soon\n")

    proxy.hang_up_and_wait_for("reload refused, the running configuration kept: CACHE_TTL='soon': "
                               "expected a positive number of seconds")

    assert {proxy.status_with(TOKEN_A) for _ in range(20)} == {200}
    assert proxy.status_with(TOKEN_B) == 401
    assert "reloaded:" not in proxy.log.read_text()


def test_a_reload_that_changes_the_port_is_refused(running):
    proxy = running(f"AUTH_TOKENS={TOKEN_A}\n")
    other = free_port()
    proxy.write_env(f"AUTH_TOKENS={TOKEN_B}\n", port=other)

    proxy.hang_up_and_wait_for("reload refused, the running configuration kept: HTTP_PORT changed: "
                               "the listening sockets stay open through a reload; restart to change it")

    assert refused(other)
    assert (proxy.status_with(TOKEN_A), proxy.status_with(TOKEN_B)) == (200, 401)


def rules_env(upstream, rules) -> str:
    """An .env reaching the test upstream (on loopback, its port) with RULES_FILE `rules`."""
    return (f"AUTH_TOKENS={TOKEN_A}\nUPSTREAM_ALLOW_PRIVATE=true\n"
            f"UPSTREAM_ALLOWED_PORTS={upstream.port}\nRULES_FILE={rules}\n")


def cache_of(proxy: Running, url: str) -> str:
    return request(proxy.port, q(url), headers={"Authorization": f"Bearer {TOKEN_A}"}).headers["X-Cache"]


def test_sighup_reads_the_rules_file_again(running, upstream, tmp_path):
    url = upstream.serve("/ruled", b"ruled")
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rule]]\npath = "/ruled"\nbypass = true\n')
    proxy = running(rules_env(upstream, rules))
    assert {cache_of(proxy, url) for _ in range(4)} == {"BYPASS"}

    rules.write_text('[[rule]]\npath = "/ruled"\nttl = 60\n')
    proxy.hang_up_and_wait_for("reloaded: 2 workers on the new configuration")

    assert [cache_of(proxy, url) for _ in range(2)] == ["MISS", "HIT"]


def test_a_worker_started_again_after_a_crash_serves_the_rules_read_at_start_not_the_file_now(
        running, upstream, tmp_path):
    """The rules are read once per configuration, by the parent: a worker replaced after a
    crash serves with them, not with an edit of the file that no SIGHUP has checked yet."""
    url = upstream.serve("/ruled", b"ruled")
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rule]]\npath = "/ruled"\nbypass = true\n')
    proxy = running(rules_env(upstream, rules))
    # Both first workers started (the port answers as soon as the parent has bound it).
    first = wait_until(lambda: len(pids := re.findall(r"worker (\d+) started", proxy.log.read_text())) == 2
                       and pids, timeout=30)
    assert {cache_of(proxy, url) for _ in range(4)} == {"BYPASS"}
    rules.write_text('[[rule]]\npath = "/ruled"\nttl = 60\n')  # edited, not reloaded

    for pid in map(int, first):
        os.kill(pid, signal.SIGKILL)  # the workers of the proxy this test started
    wait_until(lambda: proxy.log.read_text().count("starting another") == 2 and not refused(proxy.port),
               timeout=30)

    assert {cache_of(proxy, url) for _ in range(4)} == {"BYPASS"}


def test_a_bad_rules_file_at_reload_is_refused_with_its_line_and_the_old_rules_kept(running, upstream, tmp_path):
    url = upstream.serve("/ruled", b"ruled")
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rule]]\npath = "/ruled"\nbypass = true\n')
    proxy = running(rules_env(upstream, rules))
    assert cache_of(proxy, url) == "BYPASS"

    rules.write_text('[[rule]]\npath = "/ruled"\nbypass = false\nttl_min = 60\nttl_max = 10\n')
    proxy.hang_up_and_wait_for(f"reload refused, the running configuration kept: RULES_FILE={rules}: "
                               "line 4: ttl_min = 60 is more than ttl_max = 10; expected ttl_min at "
                               "most ttl_max")

    assert {cache_of(proxy, url) for _ in range(20)} == {"BYPASS"}
    assert upstream.hits["/ruled"] == 21
    assert "reloaded:" not in proxy.log.read_text()


# wrk's Lua: every answer's body tallied (raw: GET_FORMAT=raw's b"v"; json: GET_FORMAT=json's),
# summed over wrk's threads and printed at the end.
WRK_TALLY = r"""
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) raw, json, other = 0, 0, 0 end
function response(status, headers, body)
  if body == "v" then raw = raw + 1
  elseif body == '{"key": "k", "value": "v", "source": "cache"}'
      or body == '{"key": "k", "value": "v", "source": "redis"}' then json = json + 1
  else other = other + 1 end
end
function done(summary, latency, requests)
  local totals = {raw = 0, json = 0, other = 0}
  for _, thread in ipairs(threads) do
    for name, _ in pairs(totals) do totals[name] = totals[name] + thread:get(name) end
  end
  io.write(string.format("bodies: raw %d, json %d, other %d\n", totals.raw, totals.json, totals.other))
end
"""
FORMATS = ("json", "raw", "json")  # GET_FORMAT of each reload in turn, from raw: each one a change
WORKER_STOPPED = "proxy.process.serve: stopped"  # a worker's last line, once it has drained


@pytest.mark.skipif(not shutil.which("wrk"), reason="wrk is not installed (apt-get install wrk; .ci/run installs it)")
def test_reloads_under_wrk_load_fail_no_request_and_the_new_workers_answer(running, tmp_path):
    proxy = running("GET_FORMAT=raw\nACCESS_LOG=false\n")
    assert request(proxy.port, "/get/k").body == b"v"  # the first workers serve
    script = tmp_path / "tally.lua"
    script.write_text(WRK_TALLY)
    # 16 keep-alive connections on loopback; -d only bounds a run the test fails to stop.
    wrk = subprocess.Popen(["wrk", "-t2", "-c16", "-d60s", "--timeout", "5s", "-s", str(script),
                            f"http://127.0.0.1:{proxy.port}/get/k"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for done, get_format in enumerate(FORMATS, start=1):
            proxy.write_env(f"GET_FORMAT={get_format}\nACCESS_LOG=false\n")
            proxy.process.send_signal(signal.SIGHUP)
            wait_until(lambda done=done: proxy.log.read_text().count("reloaded: 2 workers") == done,
                       timeout=30, interval=0.05)
        # Every replaced worker drained and gone: wrk's connections all moved to the new ones.
        wait_until(lambda: proxy.log.read_text().count(WORKER_STOPPED) == 2 * len(FORMATS),
                   timeout=30, interval=0.05)
        assert wrk.poll() is None, "wrk ended before the reloads did: the test proved nothing"
        wrk.send_signal(signal.SIGINT)  # wrk stops and prints its figures
        out, err = wrk.communicate(timeout=30)
    finally:
        if wrk.poll() is None:
            wrk.kill()
            wrk.wait()
    assert wrk.returncode == 0, err
    assert "requests in" in out, out
    assert "Socket errors" not in out, out  # wrk prints the line only when there was one
    assert "Non-2xx or 3xx responses" not in out, out
    tally = re.search(r"bodies: raw (\d+), json (\d+), other (\d+)", out)
    assert tally is not None, out
    raw, json_, other = map(int, tally.groups())
    # json: only workers started by a reload answer in that form.
    assert other == 0 and raw > 0 and json_ > 0, out
    assert "still open after the" not in proxy.log.read_text()  # each drain ended by itself
