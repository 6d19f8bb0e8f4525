"""`python -m bench.profile`: where a hit path's time goes, the top frames by py-spy samples
(`pip install py-spy==0.4.3`; it reads the proxy process, so it may need root or ptrace rights).

Starts a throw-away Redis, the proxy (one worker) and wrk on one path, samples the proxy with
`py-spy record --gil` (only the thread holding the GIL: Python's time, not its waits) and
prints the frames that held the most samples, by their own time and with their callees.
"""

import argparse
import collections
import os
import subprocess
import sys
import tempfile
from urllib.parse import quote

import redis

from bench.servers import VALUE_SIZE, ceiling, get, proxy
from proxy.store.launcher import RedisServer, free_port

_PLUMBING = ("(threading.py)", "(socketserver.py)", ".handle (http_server.py)",
             ".handle (server.py)", ".handle_one_request (http_server.py)")
PATHS = ("/get/bench", "/?url={origin}&key=bench", "/?key=bench", "resp", "site")


def top_frames(collapsed: str, count: int) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """From py-spy's raw (collapsed) stacks: the `count` frames with most samples of their own,
    and with most samples in all (callees included), each as a share of all samples."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in collapsed.splitlines():
        stack, _, number = line.rpartition(" ")
        if not stack:
            continue
        n = int(number)
        samples += n
        frames = [frame.split(" (")[0] + " (" + frame.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1]
                  + ")" if " (" in frame else frame for frame in stack.split(";")]
        own[frames[-1]] += n
        for frame in set(frames):
            if not frame.endswith(_PLUMBING):  # under every sample: they say nothing
                total[frame] += n
    share = lambda counter: [(name, n / samples) for name, n in counter.most_common(count)]  # noqa: E731
    return share(own), share(total)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", choices=PATHS, help="the hit path to load ('resp': RESP GET; "
                        "'site': a path of the origin through reverse-proxy mode, ORIGIN_URL)")
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--l1-off", action="store_true",
                        help="CACHE_CAPACITY=0, L1_INVALIDATION=ttl: every hit reads Redis")
    args = parser.parse_args(argv)
    origin_port, http_port, resp_port = free_port(), free_port(), free_port()
    origin = quote(f"http://127.0.0.1:{origin_port}/page", safe="")
    settings = {"cache_capacity": 0, "l1_invalidation": "ttl"} if args.l1_off else {}
    site = args.path == "site"
    if site:
        settings["origin_url"] = f"http://127.0.0.1:{origin_port}"
    with RedisServer() as store, ceiling(origin_port), \
            proxy(store.url, http_port, origin_port, resp_port=resp_port, **settings) as child, \
            tempfile.TemporaryDirectory() as folder:
        client = redis.Redis.from_url(store.url)
        client.set("bench", b"v" * VALUE_SIZE)
        client.set("key:__rand_int__", b"v" * VALUE_SIZE)
        url = f"http://127.0.0.1:{http_port}" + ("/site" if site else args.path.format(origin=origin))
        # The ports accept before the proxy is built: these answers say it is, and fill L1.
        for warm in (("/_proxy/health", "/site", "/site") if site else (
                "/health", f"/?url={origin}&key=bench", "/?key=bench", "/get/bench")):
            get(http_port, warm)
        if args.path == "resp":
            load = ["redis-benchmark", "-p", str(resp_port), "-t", "get", "-n", "10000000", "-q"]
        else:
            load = ["wrk", "-t2", "-c16", f"-d{args.seconds + 4}s", url]
        loader = subprocess.Popen(load, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            raw = os.path.join(folder, "stacks.txt")
            subprocess.run(["py-spy", "record", "--gil", "--nonblocking", "--subprocesses", "--format", "raw",
                            "-o", raw,
                            "--duration", str(args.seconds), "--pid", str(child.pid)],
                           check=True, capture_output=True, timeout=args.seconds + 60)
        finally:
            loader.terminate()
            loader.wait(10)
        with open(raw) as stacks:
            own, total = top_frames(stacks.read(), args.top)
        client.close()
    out = [f"{args.path}: top frames by own samples (py-spy --gil)"]
    out += [f"  {share:6.1%}  {name}" for name, share in own]
    out.append(f"{args.path}: top frames with their callees")
    out += [f"  {share:6.1%}  {name}" for name, share in total]
    sys.stdout.write("\n".join(out) + "\n")  # the command's output
    return 0


if __name__ == "__main__":
    sys.exit(main())
