"""Authentication: bearer tokens (RFC 6750) checked in constant time, and a per-client budget
of failed attempts (AUTH_FAIL_LIMIT) shared by HTTP and RESP."""

import hashlib
import hmac
import logging
import re
from collections.abc import Iterable, Sequence

from proxy.errors import ConfigError, TooManyRequests, Unauthorized
from proxy.serving.rate_limit import RateLimiter

log = logging.getLogger(__name__)

# RFC 6750 §2.1: credentials = "Bearer" 1*SP b64token; the scheme is case-insensitive
# (RFC 9110 §11.1), the token is not.
_BEARER = re.compile(r"bearer +([A-Za-z0-9\-._~+/]+=*)", re.IGNORECASE)
_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
SHORT_TOKEN = 16
AUTH_BLOCKED = "too many failed authentications"

# Routes anyone may reach: a load balancer's health check carries no token.
OPEN_ROUTES = frozenset({"/health"})
# Counters alone, for a Prometheus scraper: METRICS_REQUIRE_AUTH=false opens it (and it alone:
# /stats and /dashboard show the paths of the last errors).
METRICS_ROUTE = "/metrics"


def _challenge(error: str) -> dict[str, str]:
    # RFC 6750 §3: the challenge names the realm, and the error once credentials were sent.
    return {"WWW-Authenticate": f'Bearer realm="redis-proxy", error="{error}"'}


def _digest(token: str) -> bytes:
    # Comparing fixed-length digests keeps a token's length from showing in the timing too.
    return hashlib.sha256(token.encode()).digest()


def read_tokens_file(path: str) -> list[str]:
    """One token a line; blank lines and `#` comments are skipped."""
    with open(path, encoding="utf-8") as lines:
        return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


class Authenticator:
    """Decides whether a request may proceed. No tokens means the proxy is open."""

    def __init__(self, tokens: Iterable[str] = (), *, metrics_require_auth: bool = True,
                 fail_limiter: RateLimiter | None = None):
        self._digests = tuple(_digest(token) for token in tokens)
        self.metrics_require_auth = metrics_require_auth
        # One token taken per failed attempt; an empty bucket blocks the client (None: no limit).
        self.fail_limiter = fail_limiter

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def required_for(self, path: str) -> bool:
        """Whether `path` (the route, without the query) needs a token."""
        if not self.enabled or path in OPEN_ROUTES:
            return False
        if path == METRICS_ROUTE:
            return self.metrics_require_auth
        return True

    def check(self, path: str, authorization: Sequence[str], peer: str = "",
              forwarded_for: Sequence[str] = ()) -> None:
        """Raise Unauthorized unless `path` is open or `authorization` (every Authorization
        header the request carried) is exactly one valid bearer token; TooManyRequests while
        the client (`peer`, `forwarded_for` as the rate limiter reads them) is blocked."""
        if not self.required_for(path):
            return
        self.refuse_if_blocked(peer, forwarded_for)
        try:
            self._check_header(authorization)
        except Unauthorized:
            if authorization:  # credentials were presented and refused: a guess, counted
                self.failed(peer, forwarded_for)
            raise

    def check_site(self, authorization: Sequence[str], peer: str = "",
                   forwarded_for: Sequence[str] = ()) -> None:
        """A request for the origin's site, which the tokens do not guard: TooManyRequests while
        the client is blocked, as on the proxy's routes; a bearer token in it that is not one of
        ours counts as a failed attempt. Else the answers would be an oracle without a limit:
        our token is kept here and the cached page answers, any other is forwarded and the
        origin answers. Other schemes (Basic...) are the origin's business: not counted."""
        if not self.enabled:
            return
        self.refuse_if_blocked(peer, forwarded_for)
        for value in authorization:
            match = _BEARER.fullmatch(value.strip(" \t"))
            if match is not None and not self.accepts(match.group(1)):
                self.failed(peer, forwarded_for)  # once per request, as on the proxy's routes
                return

    def _check_header(self, authorization: Sequence[str]) -> None:
        if len(authorization) != 1:
            raise Unauthorized()  # none, or two: which one would count is ambiguous
        # RFC 9110 §5.5: whitespace around a field value is not part of it.
        match = _BEARER.fullmatch(authorization[0].strip(" \t"))
        if match is None:
            raise Unauthorized("the Authorization header must be 'Bearer <token>'",
                               headers=_challenge("invalid_request"))
        if not self.accepts(match.group(1)):
            raise Unauthorized("the bearer token is not one of the configured tokens",
                               headers=_challenge("invalid_token"))

    def refuse_if_blocked(self, peer: str, forwarded_for: Sequence[str] = ()) -> None:
        """Raise TooManyRequests while the client is over AUTH_FAIL_LIMIT. The address is
        blocked, not the tokens it tried: a valid token from it is refused too until the budget
        refills (as fail2ban does), so a guesser learns nothing from its attempts meanwhile."""
        if self.fail_limiter is None:
            return
        wait = self.fail_limiter.wait(peer, forwarded_for, take=False)
        if wait:
            limit = round(self.fail_limiter.burst)
            raise TooManyRequests(f"over {limit} failed authentications per minute from your "
                                  f"address; retry in {wait} s", error=AUTH_BLOCKED,
                                  headers={"Retry-After": str(wait)})

    def failed(self, peer: str, forwarded_for: Sequence[str] = ()) -> None:
        """Count one failed authentication against the client's budget."""
        if self.fail_limiter is not None:
            self.fail_limiter.wait(peer, forwarded_for)

    def is_own(self, authorization: str) -> bool:
        """Whether an Authorization value is this proxy's bearer token (never forwarded)."""
        match = _BEARER.fullmatch(authorization.strip(" \t"))
        return match is not None and self.enabled and self.accepts(match.group(1))

    def accepts(self, token: str) -> bool:
        """Compare against every configured token, with no early exit that would tell
        by its timing how many tokens there are or which one came close."""
        presented = _digest(token)
        found = False
        for digest in self._digests:
            found |= hmac.compare_digest(presented, digest)
        return found


def tokens_of(configured: Iterable[str], path: str) -> list[str]:
    """AUTH_TOKENS and AUTH_TOKENS_FILE together; ConfigError (exit 2) on an unusable set."""
    tokens = list(configured)
    problems = []
    if path:
        try:
            from_file = read_tokens_file(path)
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError([f"AUTH_TOKENS_FILE={path!r}: cannot be read ({exc.__class__.__name__})"]) \
                from exc
        if not from_file:
            # Fail closed: an operator who points at a file means to require tokens.
            problems.append(f"AUTH_TOKENS_FILE={path!r}: expected at least one token")
        tokens += from_file
    # A token that is not a b64token could never be presented in a valid header. Never echo it.
    bad = sum(1 for token in tokens if not _TOKEN.fullmatch(token))
    if bad:
        problems.append(f"AUTH_TOKENS: {bad} token(s) <hidden>: expected letters, digits and "
                        "-._~+/ (RFC 6750 b64token)")
    if problems:
        raise ConfigError(problems)
    short = sum(1 for token in tokens if len(token) < SHORT_TOKEN)
    if short:
        log.warning("%d auth token(s) shorter than %d characters; use long random tokens "
                    "(for example: openssl rand -hex 32)", short, SHORT_TOKEN)
    return tokens

