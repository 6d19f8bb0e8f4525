"""The documentation's examples, run: every ```console, ```sh/```bash and ```pycon block of
README.md and docs/OPERATIONS.md, against one proxy on free ports with a local origin standing
in for example.com. A block that cannot run has `<!-- example: not run: <why> -->` above it.

In a ```console block, `$ command` lines are run with bash and what follows each, up to the
next `$`, is the output it must print: a line `...` stands for any lines, and `...` inside a
line for any text. `curl` and `redis-cli` are given the proxy's ports, `example.com` the local
origin's, and `redis-cli` prints as on a terminal (`--no-raw`). A ```sh block's lines must
exit 0; a ```pycon block runs as a doctest (ELLIPSIS on)."""

import dataclasses
import os
import re
import shutil
import subprocess
import sys
from urllib.parse import quote

import pytest
import redis

import http_server
from load_env import load_settings
from proxy.resp import server as resp_server
from proxy.store.launcher import RedisServer
from redis_proxy import RedisProxy
from servers import ROOT, ServerThread, Upstream

DOCS = ("README.md", "docs/OPERATIONS.md")
LANGUAGES = ("console", "sh", "bash", "pycon")
NOT_RUN = re.compile(r"<!-- example: not run: (\S.*?) -->")
FENCE = re.compile(r"^```(\S*)\s*$")
# What example.com answers, as far as the examples show it.
EXAMPLE_BODY = (b"<!doctype html>\n<html>\n<head>\n    <title>Example Domain</title>\n</head>\n"
                b"<body>\n<h1>Example Domain</h1>\n</body>\n</html>\n")
TIMEOUT = 30


@dataclasses.dataclass
class Example:
    doc: str
    line: int  # of the opening fence
    language: str
    lines: list[str]
    not_run: str | None

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"


def examples_of(doc: str) -> list[Example]:
    path = os.path.join(ROOT, doc)
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    found, i = [], 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if fence is None:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), len(lines))
        if fence.group(1) in LANGUAGES:
            above = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
            marker = NOT_RUN.search(above)
            found.append(Example(doc, i + 1, fence.group(1), lines[i + 1:end],
                                 marker.group(1) if marker else None))
        i = end + 1
    return found


EXAMPLES = [example for doc in DOCS for example in examples_of(doc)]


@dataclasses.dataclass
class Site:
    http: int
    resp: int
    origin: int
    env: dict[str, str]
    redis: redis.Redis
    proxy: RedisProxy

    def localise(self, text: str) -> str:
        """The example as run here: the proxy's and the origin's ports for the documented ones."""
        text = text.replace("http://127.0.0.1:8080", f"http://127.0.0.1:{self.http}")
        text = text.replace("https://example.com/", f"http://127.0.0.1:{self.origin}/")
        text = text.replace("https%3A%2F%2Fexample.com%2F", quote(f"http://127.0.0.1:{self.origin}/", safe=""))
        return re.sub(r"\bredis-cli -p 6380\b", f"redis-cli --no-raw -p {self.resp}", text)


@pytest.fixture(scope="module")
def site():
    """A proxy built from settings as `make run` builds it (defaults but for the Redis and the
    loopback origin), its own Redis, and the origin standing in for example.com."""
    origin = Upstream().start()
    origin.serve("/", EXAMPLE_BODY, headers={"Content-Type": "text/html"})
    with RedisServer(unix_socket=True) as store:
        env = {"REDIS_URL": store.url, "UPSTREAM_ALLOW_PRIVATE": "true",
               "UPSTREAM_ALLOWED_PORTS": str(origin.port)}
        proxy = RedisProxy.from_settings(load_settings(environ=env, env_file=None))
        http = ServerThread(http_server.make_server("127.0.0.1", 0, proxy)).start()
        resp = ServerThread(resp_server.make_server("127.0.0.1", 0, proxy)).start()
        # The snippets' own processes read the same settings (and .env, which sets none).
        bin_dir = os.path.dirname(sys.executable)
        child_env = {**env, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
                     "HOME": os.environ.get("HOME", ROOT), "LANG": "C.UTF-8"}
        client = redis.Redis.from_url(store.url)
        try:
            yield Site(http.port, resp.port, origin.port, child_env, client, proxy)
        finally:
            client.close()
            resp.stop()
            http.stop()
            proxy.close()
            origin.stop()


def expected_pattern(lines: list[str]) -> re.Pattern[str]:
    parts = []
    for line in lines:
        if line == "...":
            parts.append(r"(?:[^\n]*\n)*?")
        else:
            parts.append(r"[\s\S]*?".join(re.escape(piece) for piece in line.split("...")) + r"\n")
    return re.compile("".join(parts))


def commands_of(example: Example) -> list[tuple[int, str, list[str]]]:
    """A console block's (line number, command, expected output lines)."""
    commands: list[tuple[int, str, list[str]]] = []
    for offset, line in enumerate(example.lines, example.line + 1):
        if line.startswith("$ "):
            commands.append((offset, line[2:], []))
        elif commands:
            commands[-1][2].append(line)
        elif line.strip():
            raise AssertionError(f"{example.doc}:{offset}: output before any '$ ' command: {line!r}")
    return commands


def run(site: Site, command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", command], cwd=ROOT, env=site.env, capture_output=True,
                          timeout=TIMEOUT, stdin=subprocess.DEVNULL)


def printed(done: subprocess.CompletedProcess) -> str:
    out = done.stdout.decode("utf-8", "replace").replace("\r\n", "\n")
    return out if out.endswith("\n") or not out else out + "\n"


def check_console(site: Site, example: Example) -> None:
    for line, command, expected in commands_of(example):
        tool = command.split()[0]
        if shutil.which(tool, path=site.env["PATH"]) is None:
            pytest.skip(f"{example.doc}:{line}: {tool} is not installed")
        local = site.localise(command)
        done = run(site, local)
        output = printed(done)
        while expected and not expected[-1].strip():
            expected.pop()
        shown = done.returncode == 0 and expected_pattern(expected).fullmatch(output) is not None
        assert shown, (
            f"{example.doc}:{line}: `{command}` (run as `{local}`, exit {done.returncode}) printed:\n"
            f"{output}{done.stderr.decode(errors='replace')}\n"
            f"but {example.doc}:{line + 1} shows:\n" + "\n".join(expected))


def check_shell(site: Site, example: Example) -> None:
    for line, command in enumerate(example.lines, example.line + 1):
        if not command.strip() or command.lstrip().startswith("#"):
            continue
        done = run(site, site.localise(command))
        assert done.returncode == 0, (f"{example.doc}:{line}: `{command}` exited {done.returncode}:\n"
                                      f"{done.stdout.decode(errors='replace')}"
                                      f"{done.stderr.decode(errors='replace')}")


def check_pycon(site: Site, example: Example, tmp_path) -> None:
    script = tmp_path / "example.txt"
    script.write_text(site.localise("\n".join(example.lines)) + "\n", encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "doctest", "-o", "ELLIPSIS", str(script)], cwd=ROOT,
                          env=site.env, capture_output=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    report = (done.stdout + done.stderr).decode(errors="replace")
    # doctest numbers the lines of the block from 1; say where they are in the document.
    report = re.sub(r'File "[^"]*", line (\d+)',
                    lambda m: f"{example.doc}:{example.line + int(m.group(1))}", report)
    assert done.returncode == 0, f"{example.where}: the Python example failed:\n{report}"


@pytest.mark.parametrize("example", EXAMPLES, ids=[example.where for example in EXAMPLES])
def test_the_example_prints_what_the_document_shows(site, example, tmp_path):
    if example.not_run is not None:
        pytest.skip(f"{example.where}: not run: {example.not_run}")
    # Each block starts from an empty cache, so it reads on its own.
    site.redis.flushall()
    site.proxy.local.clear()
    if example.language == "console":
        check_console(site, example)
    elif example.language == "pycon":
        check_pycon(site, example, tmp_path)
    else:
        check_shell(site, example)


def test_the_readme_has_runnable_examples_and_says_why_of_each_that_is_not():
    readme = [example for example in EXAMPLES if example.doc == "README.md"]
    assert sum(example.not_run is None for example in readme) >= 4
    assert {example.language for example in readme if example.not_run is None} >= {"console", "pycon"}


def test_the_extractor_reads_blocks_markers_and_expected_output(tmp_path, monkeypatch):
    doc = tmp_path / "doc.md"
    doc.write_text("text\n<!-- example: not run: starts a server -->\n```sh\nmake run\n```\n\n"
                   "```console\n$ echo a\na\n$ printf 'x\\ny\\nz'\nx\n...\n```\n```\nart\n```\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", str(tmp_path))
    found = examples_of("doc.md")
    assert [(e.line, e.language, e.not_run) for e in found] == [(3, "sh", "starts a server"),
                                                               (7, "console", None)]
    assert commands_of(found[1]) == [(8, "echo a", ["a"]), (10, "printf 'x\\ny\\nz'", ["x", "..."])]
    assert expected_pattern(["x", "..."]).fullmatch("x\ny\nz\n")
    assert not expected_pattern(["x", "z"]).fullmatch("x\ny\nz\n")
    assert expected_pattern(["Cache-Status: hit; ttl=..."]).fullmatch("Cache-Status: hit; ttl=3599\n")
