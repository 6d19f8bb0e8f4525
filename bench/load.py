"""The load generators of a bench run: wrk (HTTP, keep-alive, `--latency`; a Lua script for
distinct keys) and redis-benchmark (RESP GET), each bounded in time, their output read into
requests/s, p50, p99, errors, and the server's CPU per request (bench/cpu.py)."""

import re
import subprocess
import tempfile
from typing import Any

from bench import cpu

INSTALL = ("wrk and redis-benchmark are needed: on Debian or Ubuntu `apt-get install wrk "
           "redis-tools`, on macOS `brew install wrk redis`")

# wrk Lua: each request's path is TEMPLATE with {i} replaced by a counter modulo KEYS (distinct
# keys in turn), or by a number no other request of the run uses (KEYS = 0: misses).
_LUA = """
local template, keys, threads, counter = "%s", %d, 0, 0
setup = function(thread) threads = threads + 1; thread:set("tid", threads) end
request = function()
  counter = counter + 1
  local i = keys > 0 and counter %% keys or tid * 100000000 + counter
  return wrk.format("GET", (template:gsub("{i}", tostring(i))))
end
"""


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(url: str, seconds: float, connections: int, template: str | None = None,
        keys: int = 0, pid: int | None = None) -> dict[str, Any]:
    """Requests/s, p50 and p99 (ms), socket errors and non-2xx answers that wrk measured.
    `template`: a path with {i}, requested with distinct keys (see _LUA). `pid`: the server's,
    whose CPU (with its workers') per request is added as `cpu_us`."""
    argv = ["wrk", "-t2", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency"]
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        if template is not None:
            script.write(_LUA % (template, keys))
            script.flush()
            argv += ["-s", script.name]
        cpu_before = cpu.tree_seconds(pid) if pid else 0.0
        done = subprocess.run(argv + [url], capture_output=True, text=True, timeout=seconds + 60,
                              check=True)
        cpu_used = cpu.tree_seconds(pid) - cpu_before if pid else 0.0
    out = done.stdout
    requests = re.search(r"(\d+) requests in", out)
    served = int(requests.group(1)) if requests else 0
    per_request = {"cpu_us": round(cpu_used / served * 1e6, 1)} if pid and served else {}
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
            "p50_ms": _ms(re.search(r"\s50%\s+(\S+)", out).group(1)),  # type: ignore[union-attr]
            "p99_ms": _ms(re.search(r"\s99%\s+(\S+)", out).group(1)),  # type: ignore[union-attr]
            "errors": sum(int(n) for n in errors.groups()) if errors else 0,
            "non_2xx": int(non_2xx.group(1)) if non_2xx else 0, **per_request}


def redis_benchmark(port: int, requests: int, pipeline: int = 1,
                    pid: int | None = None) -> dict[str, Any]:
    """GET requests/s that redis-benchmark measured against `port` (50 clients). Every request
    reads the one key `key:__rand_int__` (-r is not given), so an L1 holds it. `pid`: the
    server's, whose CPU per command is added as `cpu_us`."""
    cpu_before = cpu.tree_seconds(pid) if pid else 0.0
    done = subprocess.run(["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-t", "get",
                           "-n", str(requests), "-P", str(pipeline), "-q", "--csv"],
                          capture_output=True, text=True, timeout=300, check=True)
    per_command = {"cpu_us": round((cpu.tree_seconds(pid) - cpu_before) / requests * 1e6, 2)} \
        if pid else {}
    for line in done.stdout.splitlines():
        fields = [f.strip('"') for f in line.split(",")]
        if fields and fields[0].startswith("GET"):
            return {"rps": float(fields[1]), "p50_ms": float(fields[4]) if len(fields) > 4 else None,
                    "p99_ms": float(fields[6]) if len(fields) > 6 else None, **per_command}
    raise RuntimeError(f"no GET figure in redis-benchmark output: {done.stdout!r}")
