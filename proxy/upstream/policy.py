"""Which upstream URLs the proxy may fetch: schemes, user info, hosts, ports and addresses.

The policy decides; `upstream.py` opens the connections and asks it twice per hop: once for
the URL without DNS (`check_url(resolve=False)`), then once for the addresses (`check_connect`,
the hop's one name lookup, bounded by the fetch's deadline). The connection goes only to those
addresses, and no second lookup, which could answer differently (DNS rebinding), is made.
"""

import dataclasses
import functools
import ipaddress
import logging
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future

import idna

from proxy.cache.target import DEFAULT_PORTS as SCHEMES
from proxy.cache.target import Target, check_host, split
from proxy.errors import BadRequest, Forbidden, UnrecordedSource
from proxy.log_limit import LogLimiter

log = logging.getLogger(__name__)

Resolver = Callable[[str, int], list[str]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_PORTS = (80, 443, 8080, 8443)
MAX_LOOKUPS = 8  # name lookups in flight at once, per policy

# Refused address blocks, an explicit list rather than ipaddress's is_global/is_private, whose
# ranges were wrong before CVE-2024-4032. Sources: the IANA IPv4 and IPv6 Special-Purpose
# Address Registries (RFC 6890), https://www.iana.org/assignments/iana-ipv4-special-registry/
# and https://www.iana.org/assignments/iana-ipv6-special-registry/, plus the multicast and
# reserved space beside them (RFC 5771, RFC 1112 §4, RFC 4291 §2.7). Blocks that embed an IPv4
# address (mapped, NAT64, 6to4, Teredo) are refused whatever they embed: the host may translate
# them to the embedded address, which the proxy cannot see.
REFUSED_BLOCKS = tuple((ipaddress.ip_network(block), name) for block, name in (
    ("0.0.0.0/8", "'this network', RFC 791"),
    ("10.0.0.0/8", "private, RFC 1918"),
    ("100.64.0.0/10", "shared address space (carrier-grade NAT), RFC 6598"),
    ("127.0.0.0/8", "loopback, RFC 1122"),
    ("169.254.0.0/16", "link-local, cloud metadata at 169.254.169.254, RFC 3927"),
    ("172.16.0.0/12", "private, RFC 1918"),
    ("192.0.0.0/24", "IETF protocol assignments, RFC 6890"),
    ("192.0.2.0/24", "documentation TEST-NET-1, RFC 5737"),
    ("192.88.99.0/24", "6to4 relay anycast, RFC 7526"),
    ("192.168.0.0/16", "private, RFC 1918"),
    ("198.18.0.0/15", "benchmarking, RFC 2544"),
    ("198.51.100.0/24", "documentation TEST-NET-2, RFC 5737"),
    ("203.0.113.0/24", "documentation TEST-NET-3, RFC 5737"),
    ("224.0.0.0/4", "multicast, RFC 5771"),
    ("240.0.0.0/4", "reserved, RFC 1112"),
    ("255.255.255.255/32", "limited broadcast, RFC 919"),
    ("::/128", "unspecified, RFC 4291"),
    ("::1/128", "loopback, RFC 4291"),
    ("::ffff:0:0/96", "IPv4-mapped, RFC 4291"),
    ("::/96", "IPv4-compatible (deprecated), RFC 4291 §2.5.5.1"),
    ("64:ff9b::/96", "NAT64 well-known prefix, RFC 6052"),
    ("64:ff9b:1::/48", "NAT64 local-use prefix, RFC 8215"),
    ("100::/64", "discard-only, RFC 6666"),
    ("2001::/32", "Teredo, RFC 4380"),
    ("2001:2::/48", "benchmarking, RFC 5180"),
    ("2001:db8::/32", "documentation, RFC 3849"),
    ("2002::/16", "6to4, RFC 3056"),
    ("3fff::/20", "documentation, RFC 9637"),
    ("5f00::/16", "segment routing SIDs, RFC 9602"),
    ("fc00::/7", "unique local (ULA), RFC 4193"),
    ("fe80::/10", "link-local, RFC 4291"),
    ("fec0::/10", "site-local (deprecated), RFC 3879"),
    ("ff00::/8", "multicast, RFC 4291"),
))
# Everything assigned for global IPv6 unicast lies in 2000::/3 (RFC 4291 §2.4, IANA IPv6
# Address Space registry); an address outside it is refused even if no block above names it.
GLOBAL_UNICAST_V6 = ipaddress.ip_network("2000::/3")
# Blocks whose low 32 bits are an IPv4 address, named in refusal details.
_LOW_32_EMBEDDING = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"),
                     ipaddress.ip_network("::/96"))

# A host whose last label is a number is an IPv4 address to URL parsers (WHATWG URL §3.5)
# and to inet_aton(3), which also reads 2130706433, 0x7f.1, 0177.0.0.1 and 127.1 as 127.0.0.1.
_NUMERIC_LABEL = re.compile(r"(0x[0-9a-f]*|[0-9]+)")
_HOST_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*")  # LDH labels (and _, seen in the wild)


def system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def refused_block(address: str) -> str | None:
    """Why `address` may not be connected to, or None when it is a public unicast address."""
    try:
        ip: IPAddress = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return f"{address!r} is not an IP address"
    for block, name in REFUSED_BLOCKS:
        if ip.version == block.version and ip in block:
            return f"{ip} is in {block} ({name}){_embedded(ip)}"
    if ip.version == 6 and ip not in GLOBAL_UNICAST_V6:
        return f"{ip} is outside {GLOBAL_UNICAST_V6}, the IPv6 global unicast space"
    return None


def _embedded(ip: IPAddress) -> str:
    if not isinstance(ip, ipaddress.IPv6Address):
        return ""
    inner = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
    if inner is None and any(ip in block for block in _LOW_32_EMBEDDING):
        inner = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return f", embedding {inner}" if inner is not None else ""


# Pure functions of a host string, asked several times per fetch (the check without DNS, the
# hop's, the connect's): remembered, a bounded number of hosts (an error is raised each time).
@functools.lru_cache(maxsize=4096)
def normalise_host(raw: str) -> str:
    """`raw` as an A-label name (IDNA 2008 with UTS #46 mapping, RFC 5891) in lower case, without
    a trailing dot; an IPv6 literal as given. BadRequest when it is not a host name at all."""
    host = raw[:-1] if raw.endswith(".") else raw
    if ":" in host:
        if "%" in host:
            raise BadRequest(f"host {raw!r} has an IPv6 zone identifier; zones are not fetched",
                             error="bad url")
        try:
            return str(ipaddress.IPv6Address(host))
        except ValueError as exc:
            raise BadRequest(f"host {raw!r} is not a valid IPv6 address", error="bad url") from exc
    if not host.isascii():
        try:
            host = idna.encode(host, uts46=True).decode("ascii")
        except idna.IDNAError as exc:
            raise BadRequest(f"host {raw!r} is not a valid internationalised domain name "
                             f"(IDNA 2008): {exc}", error="bad url") from exc
    host = host.lower()
    if not _HOST_NAME.fullmatch(host) or len(host) > 253 or \
            any(len(label) > 63 for label in host.split(".")):
        raise BadRequest(f"host {raw!r} is not a valid host name: use letters, digits, '-' "
                         "and dots, or an IP address", error="bad url")
    if "xn--" in host:
        try:
            idna.decode(host)
        except idna.IDNAError as exc:
            raise BadRequest(f"host {raw!r} has an invalid IDNA A-label (xn--): {exc}",
                             error="bad url") from exc
    return host


class UpstreamPolicy:
    """Refuses URLs outside the allowed schemes, ports and hosts, and non-public addresses.

    `allowed_hosts` holds exact names and `*.suffix` patterns; `*.example.com` matches any name
    under example.com but not example.com itself (as a TLS wildcard, RFC 6125 §6.4.3), so list
    both to allow both. `allow_private` lifts the address check only. Refusals are counted by
    reason in `refusals` for the metrics.
    """

    def __init__(self, *, allowed_hosts: tuple[str, ...] = (),
                 allowed_ports: tuple[int, ...] = DEFAULT_PORTS,
                 allow_private: bool = False, resolver: Resolver = system_resolver,
                 max_lookups: int = MAX_LOOKUPS):
        self.allowed_hosts = tuple(_host_rule(rule) for rule in allowed_hosts)
        self.allowed_ports = frozenset(allowed_ports)
        self.allow_private = allow_private
        self.resolver = resolver
        self.refusals: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.log_limiter = LogLimiter(log)  # a client retrying a refused URL is told once a while
        self._lookup_slots = threading.BoundedSemaphore(max_lookups)

    def refusal_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self.refusals)

    def check_url(self, url: str, *, resolve: bool = True) -> str:
        """The URL to fetch for `url` (host normalised), or Forbidden / BadRequest (check_target)."""
        return self.check_target(split(url), resolve=resolve).url

    def check_target(self, target: Target, *, resolve: bool = True) -> Target:
        """`target` with its host normalised, or Forbidden / BadRequest. With `resolve=False` a
        name's addresses are left to the fetch (no DNS on a cache hit)."""
        if target.scheme not in SCHEMES:
            self._refuse("scheme", f"scheme {target.scheme!r} refused: only http and https "
                         "are fetched")
        if "@" in target.netloc:
            self._refuse("userinfo", "a url with user info (user:password@) is refused: "
                         "credentials are never sent upstream from a shared cache")
        check_host(target)
        dns_name = self._check_host(target.host, target.effective_port)
        if resolve or _is_ip(dns_name):
            try:
                self.check_connect(dns_name, target.effective_port)
            except OSError:
                pass  # unresolvable now: the fetch resolves again, checks, and reports 502
        # Rebuilt from the checked parts, so the HTTP client cannot parse it differently.
        netloc = f"[{dns_name}]" if ":" in dns_name else dns_name
        if target.port is not None:
            netloc += f":{target.port}"
        return dataclasses.replace(target, netloc=netloc, host=dns_name)

    def check_source(self, url: str, hops: tuple[tuple[str, str], ...] | None) -> None:
        """Forbidden unless this policy would have fetched a cached response as it was fetched:
        its URL, and each hop's URL and the address that hop connected to. No DNS: a name is
        judged by the address recorded when it was fetched. `hops` None (an entry that recorded
        none) passes on its URL alone only where the address check is lifted or the host is an
        address; otherwise UnrecordedSource."""
        target = split(url)
        self.check_target(target, resolve=False)
        if hops is None:
            host = target.host
            if not self.allow_private and not _is_ip(host):
                # Not counted as a refusal: through url= it is a miss, fetched again.
                raise UnrecordedSource(f"the cached entry of {host!r} does not record the address "
                                       "it was fetched from (stored by an earlier version); "
                                       "request it with url= to fetch it again under this policy",
                                       error="url refused")
            return
        for hop_url, address in hops:
            hop = split(hop_url)
            self.check_target(hop, resolve=False)
            self.check_address(address, host=hop.host)

    def check_connect(self, host: str, port: int, timeout: float | None = None) -> list[str]:
        """Resolve `host` (one lookup, at most `timeout` seconds) and check every address; the
        caller connects only to these. TimeoutError when the lookup takes longer."""
        dns_name = self._check_host(host.strip("[]"), port)
        if _is_ip(dns_name):
            addresses = [str(ipaddress.ip_address(dns_name))]
        else:  # not inside an `except`: a lookup error is reported without a ValueError context
            addresses = self.resolve(dns_name, port, timeout)
            if not addresses:
                raise socket.gaierror(socket.EAI_NONAME, f"{dns_name} has no address")
        if not self.allow_private:
            for address in addresses:
                self.check_address(address, host=dns_name)
        return addresses

    def resolve(self, host: str, port: int, timeout: float | None = None) -> list[str]:
        """`resolver(host, port)`, waited for at most `timeout` seconds (None: as long as it takes).

        getaddrinfo(3) has no timeout of its own and cannot be interrupted, so the lookup runs on
        a daemon thread and the caller stops waiting at the deadline; the thread ends when the
        resolver returns. Daemon threads rather than a ThreadPoolExecutor, whose workers are
        joined at interpreter exit, so a hung lookup cannot hold up shutdown. At most
        `max_lookups` run at once: a resolver that hangs ties up that many threads, not one per
        request, and the requests beyond them time out waiting for a slot."""
        if timeout is None:
            return self.resolver(host, port)
        deadline = time.monotonic() + timeout
        if not self._lookup_slots.acquire(timeout=max(0.0, timeout)):
            raise TimeoutError(f"no free lookup slot for {host} within {timeout:g} s")
        answer: Future[list[str]] = Future()
        thread = threading.Thread(target=self._lookup, args=(host, port, answer),
                                  name=f"resolve {host}", daemon=True)
        try:
            thread.start()
        except BaseException:
            self._lookup_slots.release()
            raise
        try:
            return answer.result(timeout=max(0.0, deadline - time.monotonic()))
        except TimeoutError:  # concurrent.futures.TimeoutError is TimeoutError from 3.11 on
            raise TimeoutError(f"{host} not resolved within {timeout:g} s") from None

    def _lookup(self, host: str, port: int, answer: Future[list[str]]) -> None:
        try:
            answer.set_result(self.resolver(host, port))
        except BaseException as exc:  # handed to the waiter, if it still waits
            answer.set_exception(exc)
        finally:
            self._lookup_slots.release()

    def check_address(self, address: str, host: str = "") -> None:
        if self.allow_private:
            return
        reason = refused_block(address)
        if reason is not None:
            via = f" ({host} resolves to it)" if host and host != address else ""
            self._refuse("address", f"address refused: {reason}{via}; only public addresses "
                         "are fetched (UPSTREAM_ALLOW_PRIVATE=true lifts this for internal "
                         "upstreams)")

    def _check_host(self, raw: str, port: int) -> str:
        """The name to resolve (trailing dot kept, RFC 1034 §3.1) after the host and port rules."""
        host = normalise_host(raw)
        if _is_numeric_ipv4_form(host):
            self._refuse("ip_literal", f"host {raw!r} is a numeric form of an IPv4 address "
                         "(decimal, octal, hex or shortened); write it as a dotted quad "
                         "like 93.184.216.34")
        if port not in self.allowed_ports:
            self._refuse("port", f"port {port} refused: allowed ports are "
                         + ", ".join(map(str, sorted(self.allowed_ports)))
                         + " (UPSTREAM_ALLOWED_PORTS)")
        if self.allowed_hosts and not any(_host_matches(host, rule) for rule in self.allowed_hosts):
            self._refuse("host", f"host {host!r} is not in UPSTREAM_ALLOWED_HOSTS")
        if not self.allow_private and (host == "localhost" or host.endswith(".localhost")):
            # RFC 6761 §6.3: localhost names are loopback whatever DNS says.
            self._refuse("address", f"host {host!r} is loopback (RFC 6761); only public "
                         "addresses are fetched (UPSTREAM_ALLOW_PRIVATE=true lifts this for "
                         "internal upstreams)")
        return host + "." if raw.endswith(".") and not _is_ipv4(host) else host

    def _refuse(self, reason: str, detail: str) -> None:
        with self._lock:
            self.refusals[reason] += 1
        self.log_limiter.info(f"refused {reason}", "upstream refused (%s): %s", reason, detail)
        raise Forbidden(detail, error="url refused")


@functools.lru_cache(maxsize=4096)
def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@functools.lru_cache(maxsize=4096)
def _is_ipv4(host: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(host), ipaddress.IPv4Address)
    except ValueError:
        return False


@functools.lru_cache(maxsize=4096)
def _is_numeric_ipv4_form(host: str) -> bool:
    """True for a host an IPv4 parser would read that is not a canonical dotted quad."""
    if ":" in host or not _NUMERIC_LABEL.fullmatch(host.rsplit(".", 1)[-1]):
        return False
    return not _is_ipv4(host) or str(ipaddress.IPv4Address(host)) != host


def _host_rule(rule: str) -> str:
    rule = rule.strip().lower().rstrip(".")
    wildcard, name = ("*.", rule[2:]) if rule.startswith("*.") else ("", rule)
    try:
        return wildcard + normalise_host(name)
    except BadRequest:
        log.warning("UPSTREAM_ALLOWED_HOSTS entry %r is not a host name; it matches nothing", rule)
        return rule


def _host_matches(host: str, rule: str) -> bool:
    if rule.startswith("*."):
        return host.endswith(rule[1:])  # any depth below the suffix, not the suffix itself
    return host == rule
