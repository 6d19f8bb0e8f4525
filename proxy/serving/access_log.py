"""The access log: one line per HTTP request on its own logger, `redis_proxy.access`."""

import logging
import time

LOGGER_NAME = "redis_proxy.access"
MASK = "***"


def masked_target(target: str) -> str:
    """The request target as the access log and /stats' last errors show it: the path, and the
    query's names with every value replaced by `***` (`/reset?token=***&api_key=***`; a part
    without `=` is a value alone: `***`). A query carries secrets (reset tokens, API keys, the
    URL role's `url` with its own query and password), and these are read by more people than
    the client who sent them."""
    path, mark, query = target.partition("?")
    if not query:
        return target  # nothing to mask: not even copied
    parts = [name + "=" + MASK if equals else (MASK if name else "")
             for name, equals, _value in (part.partition("=") for part in query.split("&"))]
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
