"""The command line: --help from the settings table, flags over the environment, --check-config,
and a port in use named before anything is started."""

import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys

import pytest

from load_env import Settings, load_settings
from proxy.process.command_line import parse, plain
from proxy.process.settings_table import default_text, fields_by_group, flag_of
from proxy.store.launcher import free_port
from servers import ROOT, refused, request, wait_until

FIELDS = dataclasses.fields(Settings)


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    # cwd is a temp-free place with no .env of its own: ROOT's .env leaves every value empty.
    return subprocess.run([sys.executable, "http_server.py", *args], cwd=ROOT,
                          env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


def words(text: str) -> str:
    return " ".join(text.split())


def test_help_lists_every_setting_with_its_variable_flag_default_and_meaning():
    done = run_cli("--help")
    assert done.returncode == 0 and done.stderr == ""
    text = words(done.stdout)
    for field in FIELDS:
        env = field.metadata["env"]
        metavar = f"[{env}]" if field.type is bool else env  # a bare boolean flag means true
        assert f"{flag_of(field)} {metavar}" in text, env
        assert (f"{words(plain(field.metadata['meaning']))}. Env {env}; "
                f"{field.metadata['parse'].expected}; default {plain(default_text(field))}") in text, env
    # No flag that the table does not hold.
    long_flags = set(re.findall(r"(?<![\w-])--[a-z0-9-]+", done.stdout)) - {"--help", "--check-config", "--version",
                                                                            "--SETTING"}
    aliases = {flag for field in FIELDS for flag in field.metadata.get("flags", ())}
    assert long_flags == {flag_of(field) for field in FIELDS} | {a for a in aliases if a.startswith("--")}


def test_flags_override_the_environment_and_the_env_file(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("HTTP_PORT=9000\nCACHE_TTL=60\nLOG_LEVEL=debug\n")
    options = parse(["--port", "9200", "--cache-ttl", "5", "--redis-url", "redis://127.0.0.1:7000/1"])
    settings = load_settings({"HTTP_PORT": "9100", "REDIS_URL": "redis://127.0.0.1:6999/0"},
                             env_file=str(env_file), overrides=options.overrides)
    assert (settings.http_port, settings.cache_ttl, settings.redis_url) == (9200, 5.0, "redis://127.0.0.1:7000/1")
    assert settings.log_level == "debug"  # no flag: .env still counts


def test_an_empty_flag_value_means_the_default_over_the_environment():
    options = parse(["--http-port", ""])
    assert load_settings({"HTTP_PORT": "9100"}, env_file=None, overrides=options.overrides).http_port == 8080


@pytest.mark.parametrize("argv, name, value", [
    (["-p", "81"], "HTTP_PORT", "81"), (["--port", "82"], "HTTP_PORT", "82"),
    (["--http-port", "83"], "HTTP_PORT", "83"), (["--host", "::1"], "HTTP_HOST", "::1"),
    (["-r", "redis://h:1/0"], "REDIS_URL", "redis://h:1/0"), (["-w", "3"], "HTTP_WORKERS", "3"),
    (["--workers", "4"], "HTTP_WORKERS", "4"), (["-l", "debug"], "LOG_LEVEL", "debug"),
    (["--upstream-allow-private"], "UPSTREAM_ALLOW_PRIVATE", "true"),
    (["--upstream-allow-private", "false"], "UPSTREAM_ALLOW_PRIVATE", "false"),
])
def test_short_aliases_and_bare_boolean_flags(argv, name, value):
    assert parse(argv).overrides == {name: value}


def test_a_port_flag_serves_on_that_port_over_the_environment(redis_url, tmp_path):
    env_port, flag_port = free_port(), free_port()
    env = {**os.environ, "HTTP_PORT": str(env_port), "RESP_PORT": "0", "REDIS_URL": redis_url,
           "LOG_FILE": str(tmp_path / "proxy.log")}
    process = subprocess.Popen([sys.executable, "http_server.py", "--port", str(flag_port)], cwd=ROOT,
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: not refused(flag_port) or process.poll() is not None, timeout=30)
        health = request(flag_port, "/health")
        assert health.status == 200 and json.loads(health.body)["redis"] == "ok"
        assert refused(env_port)
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=15)
        process.stderr.close()
    assert code == 0


SECRETS = {"REDIS_URL": "redis://app:url-secret-9f2@127.0.0.1:6399/0", "REDIS_PASSWORD": "pass-secret-41c",
           "AUTH_TOKENS": "token-secret-0123456789,token-secret-abcdefghij"}


def test_check_config_prints_the_effective_configuration_with_secrets_masked():
    done = run_cli("--check-config", "--port", "9300", "--cache-stale-ttl", "20", env=SECRETS)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    lines = done.stdout.splitlines()
    for line in ("REDIS_URL=redis://app:***@127.0.0.1:6399/0", "REDIS_PASSWORD=***", "AUTH_TOKENS=***",
                 "HTTP_PORT=9300", "CACHE_STALE_TTL=20", "STALE_IF_ERROR=20", "REDIS_HOST=",
                 "REDIS_MAXMEMORY=256mb", "CACHE_STORE_STATUSES=2xx"):
        assert line in lines
    assert [line.split("=")[0] for line in lines if not line.startswith("#")] == \
        [field.metadata["env"] for _group, fields in fields_by_group() for field in fields]
    for secret in ("url-secret-9f2", "pass-secret-41c", "token-secret"):
        assert secret not in done.stdout and secret not in done.stderr


def test_check_config_prints_every_problem_and_exits_2():
    done = run_cli("--check-config", "--http-port", "http", env={"CACHE_TTL": "0", "REDIS_PASSWORD": "pw-x"})
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [
        "redis-proxy: bad setting HTTP_PORT='http' (from the command line): expected an integer from 0 to 65535",
        "redis-proxy: bad setting CACHE_TTL='0': expected a positive number of seconds"]


@pytest.mark.parametrize("flag, name", [("--log-file", "LOG_FILE"), ("--auth-tokens-file", "AUTH_TOKENS_FILE"),
                                        ("--redis-tls-ca", "REDIS_TLS_CA")])
def test_check_config_refuses_files_that_cannot_be_used(tmp_path, flag, name):
    path = str(tmp_path / "no" / "such" / "file")
    done = run_cli("--check-config", flag, path, "--redis-url", "rediss://127.0.0.1:1/0")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith(f"redis-proxy: bad setting {name}={path!r}: expected a ")
    assert not (tmp_path / "no").exists()  # checked, not created


def test_make_run_passes_args_as_flags():
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    done = subprocess.run(["make", "--no-print-directory", "run", "ARGS=--check-config --port 9412"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "\nHTTP_PORT=9412\n" in done.stdout


def test_check_config_refuses_an_explicit_conflict_only():
    done = run_cli("--check-config", "--cache-stale-ttl", "10", "--stale-if-error", "20")
    assert done.returncode == 2
    assert done.stderr == "redis-proxy: bad setting STALE_IF_ERROR=20: expected at most CACHE_STALE_TTL (10)\n"
    assert run_cli("--check-config", "--cache-stale-ttl", "10").returncode == 0


@pytest.mark.parametrize("args, line", [
    (["--http-port", "abc"],
     "redis-proxy: bad setting HTTP_PORT='abc' (from the command line): expected an integer from 0 to 65535"),
    (["--upstream-allow-private", "maybe"],
     "redis-proxy: bad setting UPSTREAM_ALLOW_PRIVATE='maybe' (from the command line): expected true or false"),
    (["--redis-password", ""], None),
])
def test_a_bad_flag_value_stops_with_exit_2_naming_the_variable(args, line):
    if line is None:
        # An empty value is the default, as in the environment: nothing to refuse.
        assert run_cli("--check-config", *args).returncode == 0
        return
    done = run_cli(*args, env={"RESP_PORT": "0"})
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == line + "\n"


def test_an_unknown_flag_is_a_usage_error():
    done = run_cli("--no-such-setting", "1")
    assert done.returncode == 2
    assert "unrecognized arguments: --no-such-setting 1" in done.stderr


@pytest.fixture
def held_port():
    """A port this test listens on, so the proxy finds it in use."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        yield sock.getsockname()[1]


@pytest.mark.parametrize("name, flag, workers", [("HTTP_PORT", "--http-port", "1"),
                                                 ("RESP_PORT", "--resp-port", "1"),
                                                 ("HTTP_PORT", "--http-port", "2")])
def test_a_port_in_use_names_the_port_and_its_setting_before_starting_redis(held_port, name, flag, workers):
    other = "RESP_PORT" if name == "HTTP_PORT" else "HTTP_PORT"
    # No Redis configured: before the fix an embedded redis-server was started first.
    done = run_cli(env={name: str(held_port), other: "0", "HTTP_WORKERS": workers,
                        "REDIS_URL": "", "REDIS_HOST": "", "LOG_FILE": ""})
    assert done.returncode == 1
    assert (f"cannot start: {name}={held_port}: 127.0.0.1:{held_port} is already in use; stop what "
            f"listens there or choose another port ({name} or {flag})") in done.stderr
    assert "redis-server" not in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_version_prints_the_product_version_and_exits_0():
    done = run_cli("--version")
    assert (done.returncode, done.stdout, done.stderr) == (0, "redis-proxy 0.2.0\n", "")


def test_redis_url_with_a_port_out_of_range_is_refused_by_check_config():
    done = run_cli("--check-config", env={"REDIS_URL": "redis://127.0.0.1:99999/0"})
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == "redis-proxy: bad setting REDIS_URL: expected a port from 1 to 65535 after the host\n"
    assert run_cli("--check-config", env={"REDIS_URL": "redis://127.0.0.1:65535/0"}).returncode == 0


def test_check_config_warns_of_a_misspelled_variable_and_still_exits_0():
    done = run_cli("--check-config", env={"REDIS_PROT": "6390", "CACHE_TTTL": "5"})
    assert done.returncode == 0
    assert done.stderr.splitlines() == [
        "redis-proxy: warning: CACHE_TTTL (in the environment) is not a setting; did you mean CACHE_TTL?",
        "redis-proxy: warning: REDIS_PROT (in the environment) is not a setting; did you mean REDIS_PORT?"]


def test_a_misspelled_variable_is_logged_at_start(redis_url, tmp_path):
    port, log_file = free_port(), tmp_path / "proxy.log"
    env = {**os.environ, "HTTP_PORT": str(port), "RESP_PORT": "0", "REDIS_URL": redis_url,
           "LOG_FILE": str(log_file), "HTTP_WORKER": "2"}
    process = subprocess.Popen([sys.executable, "http_server.py"], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: not refused(port) or process.poll() is not None, timeout=30)
        assert "HTTP_WORKER (in the environment) is not a setting; did you mean HTTP_WORKERS?" \
            in log_file.read_text()
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
