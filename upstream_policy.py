"""Which upstream URLs the proxy may fetch: schemes, ports, hosts and addresses."""

import ipaddress
import socket
from collections.abc import Callable
from urllib.parse import urlsplit

from requests.adapters import HTTPAdapter

from errors import Forbidden

Resolver = Callable[[str, int], list[str]]


def system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [info[4][0] for info in infos]


class UpstreamPolicy:
    """Refuses URLs outside the allowed schemes, ports and hosts, and non-public addresses."""

    def __init__(self, *, allowed_hosts: tuple[str, ...] = (),
                 allowed_ports: tuple[int, ...] = (80, 443, 8080, 8443),
                 allow_private: bool = False, resolver: Resolver = system_resolver):
        self.allowed_hosts = tuple(h.lower() for h in allowed_hosts)
        self.allowed_ports = frozenset(allowed_ports)
        self.allow_private = allow_private
        self.resolver = resolver

    def adapter(self, pool_maxsize: int = 64) -> HTTPAdapter:
        return HTTPAdapter(pool_connections=pool_maxsize, pool_maxsize=pool_maxsize, max_retries=0)

    def check_url(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise Forbidden(f"scheme {parts.scheme!r} refused: only http and https are fetched")
        host = (parts.hostname or "").lower()
        port = parts.port or (443 if parts.scheme == "https" else 80)
        if port not in self.allowed_ports:
            raise Forbidden(f"port {port} refused: allowed ports are "
                            + ", ".join(map(str, sorted(self.allowed_ports))))
        if self.allowed_hosts and not any(
                host == rule or (rule.startswith("*.") and host.endswith(rule[1:]))
                for rule in self.allowed_hosts):
            raise Forbidden(f"host {host!r} is not in UPSTREAM_ALLOWED_HOSTS")
        if not self.allow_private:
            try:
                addresses = self.resolver(host, port)
            except OSError:
                return  # the fetch itself reports the unresolvable name as 502
            for address in addresses:
                self.check_address(address)

    def check_address(self, address: str) -> None:
        if self.allow_private:
            return
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if not ip.is_global:
            raise Forbidden(f"address {address} refused: not a public address "
                            "(set UPSTREAM_ALLOW_PRIVATE=true for internal upstreams)")
