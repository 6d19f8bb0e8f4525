"""Per-client rate limiting: a token bucket per client address, bounded in memory and shared
by the pre-forked workers."""

import functools
import ipaddress
import math
import time
from collections.abc import Callable, Iterable, Sequence

from proxy.errors import TooManyRequests
from proxy.serving.shared_buckets import SharedBuckets

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# At most this many clients are remembered (a fixed table); past it the least recently seen of
# the few slots a new client's hash may use is forgotten (it starts again with a full bucket),
# so a flood of addresses cannot grow memory.
MAX_TRACKED_CLIENTS = 16384


@functools.lru_cache(maxsize=4096)  # each request parses its peer (twice): a few hot addresses
def _address(text: str) -> IPAddress | None:
    """An address from a socket peer or an X-Forwarded-For hop (`1.2.3.4`, `1.2.3.4:5678`,
    `[::1]:80`, `::1`); None for anything else. IPv4-mapped IPv6 becomes IPv4."""
    text = text.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]  # IPv4 with a port, as some proxies write it
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


class ClientAddress:
    """Who a request comes from: the socket peer, or, when the peer is a trusted reverse proxy,
    the right-most address in X-Forwarded-For that is not itself a trusted proxy.

    Everything left of that is written by the client and could be anything, so it is never
    believed (the right-most-untrusted rule; MDN, X-Forwarded-For, "Selecting an IP address").
    """

    def __init__(self, trusted_proxies: Iterable[str] = ()):
        self.trusted = tuple(ipaddress.ip_network(net, strict=False) for net in trusted_proxies)

    def is_trusted(self, address: IPAddress) -> bool:
        return any(address in net for net in self.trusted)

    def trusts(self, peer: str) -> bool:
        """Whether the socket peer `peer` is one of the trusted proxies."""
        address = _address(peer) if self.trusted else None
        return address is not None and self.is_trusted(address)

    def resolve(self, peer: str, forwarded_for: Sequence[str] = ()) -> str:
        """The client's address; `forwarded_for` is every X-Forwarded-For header, in order."""
        nearest = _address(peer)
        if nearest is None:
            return peer  # not an IP socket (a unix socket): the peer is all there is
        if not self.trusted or not self.is_trusted(nearest):
            return str(nearest)
        hops = [hop for header in forwarded_for for hop in header.split(",")]
        for hop in reversed(hops):
            address = _address(hop)
            if address is None:
                # A trusted proxy writes real addresses; garbage here was never checked by
                # anyone, so stay with the nearest hop that was.
                break
            if not self.is_trusted(address):
                return str(address)
            nearest = address
        return str(nearest)


def bucket_key(client: str) -> str:
    """The unit that is limited: an IPv4 address, or an IPv6 /64 (one end site hands out a
    whole /64, RFC 6177, so counting single IPv6 addresses would be trivial to evade)."""
    address = _address(client)
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address) if address is not None else client


class RateLimiter:
    """`rate` requests per second per client with bursts of up to `burst` (token bucket)."""

    def __init__(self, rate: float, burst: float | None = None, *,
                 trusted_proxies: Iterable[str] = (), max_clients: int = MAX_TRACKED_CLIENTS,
                 clock: Callable[[], float] = time.monotonic):
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = max(1.0, float(burst) if burst is not None else 2.0 * rate)
        self.clock = clock
        self.clients = ClientAddress(trusted_proxies)
        # In shared memory: a limiter made before HTTP_WORKERS are forked is one budget per
        # client across all of them (with one worker, the same table serves one process).
        self._buckets = SharedBuckets(max_clients, rate, self.burst)

    def check(self, peer: str, forwarded_for: Sequence[str] = ()) -> None:
        """Take one token for the request's client, or raise TooManyRequests with Retry-After."""
        wait = self.wait(peer, forwarded_for)
        if wait:
            raise TooManyRequests(f"over {self.rate:g} requests per second (bursts of "
                                  f"{self.burst:g}) from your address; retry in {wait} s",
                                  headers={"Retry-After": str(wait)})

    def wait(self, peer: str, forwarded_for: Sequence[str] = (), *, take: bool = True) -> int:
        """Take one token for the client (`take=False`: only look); 0 when it had one, else the
        whole seconds until it will have one again."""
        key = bucket_key(self.clients.resolve(peer, forwarded_for))
        tokens = self._buckets.take(key, self.clock(), take)
        if tokens >= 1.0:
            return 0
        # RFC 9110 §10.2.3: Retry-After in whole seconds; round up so a retry then succeeds.
        return max(1, math.ceil((1.0 - tokens) / self.rate))

    def __len__(self) -> int:
        """Clients whose bucket is not full again (the others are as good as forgotten)."""
        return self._buckets.live(self.clock())

