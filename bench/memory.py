"""The memory rows of a bench run: what a stored entry costs in Redis (`MEMORY USAGE`) beyond
its body and kept headers, and the proxy's RSS while distinct values stream through its L1."""

import os
from typing import Any

import redis

from bench.servers import get, proxy, rss
from proxy.cache.entry import decode
from proxy.store.launcher import free_port

BIG_VALUE = 64 * 1024  # the L1 memory row's values


def entry_memory(client: redis.Redis, http_port: int, url_of: Any) -> dict[str, Any]:
    """MEMORY USAGE of the stored entry of a 100-byte body (`rp:bench`, the one the hit rows
    read: the same key every run, as a key's length counts) against the body and kept headers;
    and Redis's own share: MEMORY USAGE of a key of the same length holding exactly the body."""
    key = b"rp:bench"
    raw = client.get(key) or b""
    entry = decode(raw)
    if entry is None:
        raise RuntimeError("no stored entry to measure")
    kept = sum(len(name) + len(value) for name, value in entry.headers.items())
    usage = int(client.memory_usage(key, samples=0) or 0)
    bare = b"~" + key[1:]
    client.set(bare, entry.body)
    per_key = int(client.memory_usage(bare, samples=0) or 0) - len(entry.body)
    client.delete(bare)
    return {"entry_key": key.decode(), "entry_memory_usage": usage, "entry_body_bytes": len(entry.body),
            "entry_kept_header_bytes": kept, "entry_value_bytes": len(raw),
            "entry_metadata_bytes": len(raw) - len(entry.body),
            "entry_overhead_bytes": usage - len(entry.body) - kept, "entry_redis_key_bytes": per_key}


def l1_memory(client: redis.Redis, redis_url: str, origin_port: int, values: int,
               max_bytes: int) -> dict[str, Any]:
    """The proxy's RSS while a stream of distinct 64 KiB values passes through its L1, which
    CACHE_MAX_BYTES bounds."""
    for start in range(0, values, 100):
        client.mset({f"big:{i}": os.urandom(BIG_VALUE) for i in range(start, min(values, start + 100))})
    port = free_port()
    with proxy(redis_url, port, origin_port, cache_max_bytes=max_bytes, cache_capacity=100_000) as child:
        get(port, "/get/bench")
        before = rss(child.pid)
        peak = before
        for i in range(values):
            status, body = get(port, f"/get/big:{i}")
            assert status == 200 and len(body) == BIG_VALUE
            if i % 50 == 0:
                peak = max(peak, rss(child.pid))
        after = rss(child.pid)
    client.delete(*[f"big:{i}" for i in range(values)])
    return {"l1_values_streamed": values, "l1_value_bytes": BIG_VALUE, "l1_cache_max_bytes": max_bytes,
            "rss_before_bytes": before, "rss_peak_bytes": max(peak, after), "rss_after_bytes": after,
            "rss_growth_bytes": max(peak, after) - before}
