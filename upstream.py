"""The upstream fetcher: the one place that opens outbound HTTP connections."""

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urljoin

import requests
from urllib3.exceptions import HTTPError

from errors import BadGateway, GatewayTimeout, PayloadTooLarge
from upstream_policy import UpstreamPolicy

log = logging.getLogger(__name__)

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
CHUNK = 64 * 1024
USER_AGENT = "redis-proxy/1.0"


@dataclass(frozen=True)
class UpstreamResponse:
    status: int
    headers: Mapping[str, str]  # case-insensitive
    body: bytes
    url: str  # after redirects
    fetched_at: float = field(default_factory=time.time)


class Fetcher:
    """GET a URL with a total deadline, a body cap and at most `max_redirects` checked hops."""

    def __init__(self, *, timeout: float = 10.0, max_bytes: int = 10 * 1024**2,
                 max_redirects: int = 5, policy: UpstreamPolicy | None = None,
                 session: requests.Session | None = None, pool_size: int = 64):
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.max_redirects = max_redirects
        self.policy = policy or UpstreamPolicy()
        self.session = session or self._new_session(pool_size)

    def _new_session(self, pool_size: int) -> requests.Session:
        session = requests.Session()
        session.trust_env = False  # never route through proxies from the environment
        adapter = self.policy.adapter(pool_maxsize=pool_size)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.headers.update({"User-Agent": USER_AGENT,
                                # Bodies are stored as the client will see them: ask for them
                                # plain; if the origin encodes anyway, requests decodes.
                                "Accept-Encoding": "identity"})
        return session

    def close(self) -> None:
        self.session.close()

    def fetch(self, url: str, headers: Mapping[str, str] | None = None) -> UpstreamResponse:
        """Fetch `url`; raise BadGateway, GatewayTimeout, PayloadTooLarge or Forbidden."""
        deadline = time.monotonic() + self.timeout
        for _hop in range(self.max_redirects + 1):
            self.policy.check_url(url)
            response = self._request(url, headers, deadline)
            location = response.headers.get("Location")
            if response.status_code in REDIRECT_STATUSES and location:
                response.close()
                url = urljoin(url, location)
                continue
            with response:
                body = self._read_body(response, deadline)
            return UpstreamResponse(response.status_code, response.headers, body, url)
        raise BadGateway(f"upstream redirected more than {self.max_redirects} times")

    def _request(self, url: str, headers: Mapping[str, str] | None,
                 deadline: float) -> requests.Response:
        remaining = deadline - time.monotonic()
        try:
            return self.session.get(url, headers=dict(headers or {}), stream=True,
                                    allow_redirects=False, timeout=(remaining, remaining))
        except requests.Timeout as exc:
            raise GatewayTimeout(f"upstream did not answer within {self.timeout:g} s") from exc
        except requests.RequestException as exc:
            raise BadGateway(f"upstream unreachable: {_reason(exc)}") from exc

    def _read_body(self, response: requests.Response, deadline: float) -> bytes:
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise PayloadTooLarge(f"upstream declared {declared} bytes; the cap is {self.max_bytes}")
        chunks, size = [], 0
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise GatewayTimeout(f"upstream body not received within {self.timeout:g} s")
                _bound_next_read(response, remaining)
                chunk = response.raw.read1(CHUNK, decode_content=True)
                if not chunk:
                    break
                size += len(chunk)
                if size > self.max_bytes:
                    raise PayloadTooLarge(f"upstream body exceeds the cap of {self.max_bytes} bytes")
                chunks.append(chunk)
        except (requests.RequestException, OSError, HTTPError) as exc:
            if _is_timeout(exc):
                raise GatewayTimeout(f"upstream body not received within {self.timeout:g} s") from exc
            raise BadGateway(f"upstream body incomplete: {_reason(exc)}") from exc
        return b"".join(chunks)


def _bound_next_read(response: requests.Response, remaining: float) -> None:
    """Make the next socket read wait at most `remaining` seconds (a total deadline, not per read)."""
    connection = getattr(response.raw, "connection", None)
    sock = getattr(connection, "sock", None)
    if sock is not None:
        sock.settimeout(max(remaining, 0.001))


def _is_timeout(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, TimeoutError) or "timed out" in str(seen).lower():
            return True
        seen = seen.__context__ or seen.__cause__
    return False


def _reason(exc: BaseException) -> str:
    """The innermost cause, short: 'Connection refused' rather than a urllib3 repr."""
    seen: BaseException = exc
    while seen.__context__ is not None or seen.__cause__ is not None:
        seen = seen.__cause__ or seen.__context__  # type: ignore[assignment]
    text = str(seen) or type(seen).__name__
    return text.split("] ", 1)[-1][:200]
