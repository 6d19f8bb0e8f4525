"""The project's exception tree; each HTTP-facing class carries its status."""


class ProxyError(Exception):
    """Root of every error the proxy answers with; front ends map it to a reply."""

    status = 500
    error = "internal error"
    detail = "the proxy hit an unexpected error; see its log"
    headers: dict[str, str] = {}

    def __init__(self, detail: str | None = None, *, error: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(detail or self.detail)
        if detail is not None:
            self.detail = detail
        if error is not None:
            self.error = error
        if headers is not None:
            self.headers = headers


class BadRequest(ProxyError):
    status, error = 400, "bad request"


class Unauthorized(ProxyError):
    status, error = 401, "unauthorized"
    detail = "send 'Authorization: Bearer <token>' with a configured token"
    headers = {"WWW-Authenticate": 'Bearer realm="redis-proxy"'}


class Forbidden(ProxyError):
    status, error = 403, "forbidden"


class UnrecordedSource(Forbidden):
    """A cached entry that records too little of how it was fetched for the policy to judge it."""

    error = "url refused"


class NotFound(ProxyError):
    status, error = 404, "resource not found"
    detail = ("see the README for the routes: /?url=, /?key=, /get/<key>, /health, /metrics, "
              "/stats, /dashboard")


class KeyNotFound(NotFound):
    error = "key not found"
    detail = "nothing is cached under this key; request it with ?url= to fetch and cache it"


class MethodNotAllowed(ProxyError):
    status, error = 405, "method not allowed"


class RequestTimeout(ProxyError):
    status, error = 408, "request timeout"


class LengthRequired(ProxyError):
    status, error = 411, "length required"


class PayloadTooLarge(ProxyError):
    status, error = 413, "upstream body too large"


class MisdirectedRequest(ProxyError):
    """ORIGINS lists no site for the request's Host (RFC 9110 §15.5.20: this server does not
    answer for that authority)."""

    status, error = 421, "unknown host"


class URITooLong(ProxyError):
    status, error = 414, "uri too long"


class TooManyRequests(ProxyError):
    status, error = 429, "rate limited"


class HeadersTooLarge(ProxyError):
    status, error = 431, "request headers too large"


class VersionNotSupported(ProxyError):
    status, error = 505, "http version not supported"
    detail = "send HTTP/1.1 (or HTTP/1.0)"


class BadGateway(ProxyError):
    status, error = 502, "bad gateway"


class ServiceUnavailable(ProxyError):
    status, error = 503, "service unavailable"


class TooManyBans(ServiceUnavailable):
    """The ban list holds its most bans (proxy.store.bans.MAX_BANS)."""

    error = "too many bans"
    headers = {"Retry-After": "60"}


class TooManyFetches(ServiceUnavailable):
    """MAX_FETCHES upstream fetches in flight, and none ended within the wait."""

    error = "too many fetches"
    headers = {"Retry-After": "1"}


class GatewayTimeout(ProxyError):
    status, error = 504, "upstream timeout"


class NotCached(GatewayTimeout):
    """Cache-Control: only-if-cached, and nothing stored may answer (RFC 9111 §5.2.1.7)."""

    error = "not cached"
    detail = ("the request says only-if-cached and no stored response satisfies it; send it "
              "without only-if-cached to fetch it")


class StoreUnavailable(ServiceUnavailable):
    """Redis could not be reached and there was nothing else to serve."""

    error = "redis unavailable"
    detail = "the backing Redis is unreachable; retry shortly"


class ConfigError(Exception):
    """One or more settings are invalid; each message names its variable."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


class LauncherError(Exception):
    """An embedded redis-server could not be found or started."""


class ListenError(Exception):
    """A front end's port could not be bound; the message names the port and its setting."""
