"""Rate-limited log lines: a warning that repeats (Redis down, an upstream refusing) is written
once per interval per kind, and the next line says how many were held back."""

import logging
import threading
import time
from collections.abc import Callable

DEFAULT_INTERVAL = 10.0
MAX_KINDS = 1024  # distinct kinds remembered; past this the memory starts afresh


class LogLimiter:
    """`warning(kind, msg, *args)` logs at most once per `interval` seconds per `kind`; the lines
    held back meanwhile are counted and told with the next one of that kind. The clock is
    injected so tests tick it instead of sleeping."""

    def __init__(self, logger: logging.Logger, interval: float = DEFAULT_INTERVAL,
                 clock: Callable[[], float] = time.monotonic):
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self._lock = threading.Lock()
        self._kinds: dict[str, tuple[float, int]] = {}  # kind -> (last written at, held back since)

    def log(self, level: int, kind: str, msg: str, *args: object) -> bool:
        """Log `msg % args` unless a line of `kind` went out less than `interval` ago; True when
        it was written."""
        if not self.logger.isEnabledFor(level):
            return False
        now = self.clock()
        with self._lock:
            last, held = self._kinds.get(kind, (-float("inf"), 0))
            if now - last < self.interval:
                self._kinds[kind] = (last, held + 1)
                return False
            if len(self._kinds) >= MAX_KINDS and kind not in self._kinds:
                self._kinds.clear()
            self._kinds[kind] = (now, 0)
        if held:
            msg += " (%d more like this in the last %g s)"
            args = (*args, held, self.interval)
        self.logger.log(level, msg, *args)
        return True

    def warning(self, kind: str, msg: str, *args: object) -> bool:
        return self.log(logging.WARNING, kind, msg, *args)

    def info(self, kind: str, msg: str, *args: object) -> bool:
        return self.log(logging.INFO, kind, msg, *args)
