"""The access log: one line per HTTP request on its own logger, `redis_proxy.access`."""

import logging
import time
from urllib.parse import quote, unquote_plus, urlsplit, urlunsplit

LOGGER_NAME = "redis_proxy.access"
MASK = "***"


def masked_target(target: str) -> str:
    """The request target as logged: the query's `url` is kept, a password in its user info
    (`user:secret@host`) is replaced by `***`. Keys are not secrets and stay."""
    path, mark, query = target.partition("?")
    if "@" not in query and "%40" not in query.upper():  # no user info possible: as it came
        return target
    parts = query.split("&")
    for i, part in enumerate(parts):
        name, equals, value = part.partition("=")
        if name != "url":
            continue
        url = unquote_plus(value, errors="replace")
        try:
            pieces = urlsplit(url)
            password = pieces.password
        except ValueError:
            password = None
            pieces = None
        if pieces is not None and password is not None:
            userinfo, _, host = pieces.netloc.rpartition("@")
            user = userinfo.partition(":")[0]
            url = urlunsplit(pieces._replace(netloc=f"{user}:{MASK}@{host}"))
            parts[i] = name + equals + quote(url, safe="")
        elif pieces is None and "@" in url:  # unparseable: drop the user info altogether
            parts[i] = name + equals + quote(MASK + "@" + url.rpartition("@")[2], safe="")
    return path + mark + "&".join(parts)


class AccessLog:
    """Writes the access lines. Whether they are wanted is decided once, when it is built
    (ACCESS_LOG and the logger's level), so a request pays one attribute test when off."""

    def __init__(self, enabled: bool = True, logger: logging.Logger | None = None):
        self.logger = logger or logging.getLogger(LOGGER_NAME)
        self.enabled = enabled and self.logger.isEnabledFor(logging.INFO)

    def record(self, method: str, target: str, status: int, cache: str, size: int,
               started: float, client: str) -> None:
        """One request: `started` is its time.perf_counter() at dispatch (0: not dispatched)."""
        duration_ms = round((time.perf_counter() - started) * 1000, 3) if started else 0.0
        path = masked_target(target) if target else "-"
        # The text line; the JSON formatter adds the fields (logger.JsonFormatter).
        self.logger.info('%s "%s %s" %d %s %d %.3fms', client, method or "-", path, status, cache,
                         size, duration_ms,
                         extra={"fields": {"method": method or "-", "path": path, "status": status,
                                           "cache": cache, "bytes": size,
                                           "duration_ms": duration_ms, "client": client}})
