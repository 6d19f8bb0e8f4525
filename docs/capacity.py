"""Capacity model: proxy cores and Redis primaries for a request rate, hit ratio and hot set.

Built from the README's `make bench` figures (one Python process per core, 100-byte values,
loopback, 2-core machine shared with the load generator); see docs/SCALING.md for what each term means and what it leaves out.
`python3 docs/capacity.py` prints the table for 10k, 100k and 1M requests/s.
"""

import argparse
import dataclasses
import math
import sys

# README "Performance", make bench 2026-12-05 (bench/results/20261205-172324.json, 16
# connections): the proxy's own CPU per request (its cpu_us column), as requests per
# core-second; and redis-benchmark GET against Redis itself (one primary sharing the cores).
URL_L1_HIT = 23310.0  # GET /?url=&key=, L1 hit: 42.9 us
URL_REDIS_HIT = 8203.0  # GET /?url=&key=, Redis hit (no L1, distinct keys): 121.9 us
REDIS_GET = 160000.0  # redis-benchmark GET against Redis itself (one primary; it shares the cores)

# Proxy CPU of one miss (ms, one process): the request, the entry's read, one pipelined round
# trip (fetch lock, entry again, purge numbers), the upstream fetch and the store script.
# The same run: GET /?url=&key= misses (a new URL each) at 16 connections against a local
# origin, 1.453 ms (2.256 ms before issue 20, bench/results/20261205-172717-before.json);
# 0.77 ms at 64 connections, where more misses overlap: the cautious figure is kept.
MISS_CPU_MS = 1.45

# Redis commands per request: a Redis hit is one GET; a miss is 12 in 3 round trips
# (tests/e2e/test_miss_round_trips.py counts them on a real Redis): the GET; SET NX (fetch lock),
# GET (double check), GET, GET (purge numbers) in one pipeline; the store script (EVALSHA and its
# GET, GET, SET, EXISTS, GET, DEL). Counted whole, though a script's own calls cost Redis less
# than commands from the network.
OPS_PER_REDIS_HIT = 1
OPS_PER_MISS = 12
MEMORY_OVERHEAD = 1.3  # Redis per-key overhead, the entry header and fragmentation, on the body


@dataclasses.dataclass(frozen=True)
class Plan:
    rps: float
    hit_ratio: float
    hot_set_mb: float
    l1_share: float  # of the hits, the part L1 answers
    proxy_cores: int
    redis_ops: float  # commands/s over the whole cluster, invalidation messages included
    primaries_for_ops: int
    primaries_for_memory: int
    upstream_fetches: float

    @property
    def primaries(self) -> int:
        return max(self.primaries_for_ops, self.primaries_for_memory, 1)


def plan(rps: float, hit_ratio: float, hot_set_mb: float, *, l1_mb: float = 64.0,
         maxmemory_mb: float = 256.0, miss_ms: float = MISS_CPU_MS, utilisation: float = 0.6,
         proxies: int | None = None) -> Plan:
    """The sizes for `rps` requests/s of which `hit_ratio` are cache hits over a `hot_set_mb`
    working set. `miss_ms`: proxy CPU of a miss in ms (MISS_CPU_MS, measured). `utilisation`: the
    share of each core or primary that may be used."""
    # Uniform access over the hot set is the worst case for L1; skewed traffic (hot keys) does
    # better, so this under-counts L1 hits.
    l1_share = min(1.0, l1_mb / hot_set_mb) if hot_set_mb > 0 else 1.0
    hits, misses = rps * hit_ratio, rps * (1 - hit_ratio)
    core_seconds = (hits * l1_share / URL_L1_HIT + hits * (1 - l1_share) / URL_REDIS_HIT
                    + misses * miss_ms / 1000)
    cores = max(1, math.ceil(core_seconds / utilisation))
    # Every stored miss is a write: each proxy process that read the key since the last write
    # gets an invalidation message. At most every process; on average no more than the reads
    # one entry gets in its life (hits per miss), spread over the processes.
    processes = proxies if proxies is not None else cores
    fan_out = min(processes, hit_ratio / (1 - hit_ratio)) if hit_ratio < 1 else 0
    ops = hits * (1 - l1_share) * OPS_PER_REDIS_HIT + misses * OPS_PER_MISS + misses * fan_out
    for_ops = math.ceil(ops / (REDIS_GET * utilisation))
    for_memory = math.ceil(hot_set_mb * MEMORY_OVERHEAD / maxmemory_mb)
    return Plan(rps, hit_ratio, hot_set_mb, l1_share, cores, ops, for_ops, for_memory, misses)


def table(plans: list[Plan]) -> str:
    header = ("requests/s", "hit ratio", "hot set MB", "L1 share", "proxy cores", "Redis ops/s",
              "primaries (ops)", "primaries (memory)", "primaries", "upstream fetches/s")
    rows = [(f"{p.rps:,.0f}", f"{p.hit_ratio:.2f}", f"{p.hot_set_mb:,.0f}", f"{p.l1_share:.2f}",
             f"{p.proxy_cores:,}", f"{p.redis_ops:,.0f}", f"{p.primaries_for_ops:,}",
             f"{p.primaries_for_memory:,}", f"{p.primaries:,}", f"{p.upstream_fetches:,.0f}")
            for p in plans]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |",
             "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|"]
    lines += ["| " + " | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) + " |"
              for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rps", type=float, nargs="+", default=[10_000, 100_000, 1_000_000],
                        help="request rates to size for (default: 10k 100k 1M)")
    parser.add_argument("--hit-ratio", type=float, default=0.9, help="share of requests that hit")
    parser.add_argument("--hot-set-mb", type=float, default=1024, help="MB of entries in use")
    parser.add_argument("--l1-mb", type=float, default=64, help="CACHE_MAX_BYTES per process")
    parser.add_argument("--maxmemory-mb", type=float, default=256, help="REDIS_MAXMEMORY per primary")
    parser.add_argument("--miss-ms", type=float, default=MISS_CPU_MS,
                        help=f"proxy CPU of a miss in ms (measured: {MISS_CPU_MS})")
    parser.add_argument("--utilisation", type=float, default=0.6,
                        help="share of each core and primary to plan for")
    args = parser.parse_args(argv)
    if not 0 <= args.hit_ratio <= 1 or not 0 < args.utilisation <= 1:
        parser.error("--hit-ratio must be within 0..1 and --utilisation within (0, 1]")
    plans = [plan(rps, args.hit_ratio, args.hot_set_mb, l1_mb=args.l1_mb,
                  maxmemory_mb=args.maxmemory_mb, miss_ms=args.miss_ms,
                  utilisation=args.utilisation) for rps in args.rps]
    sys.stdout.write(table(plans) + "\n")  # the command's output
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
