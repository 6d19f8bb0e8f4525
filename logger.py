"""Logging set-up: text or JSON lines to stderr or a file, configured once."""

import json
import logging
import sys
import time

_HANDLER_NAME = "redis-proxy"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and exception), plus the
    structured `fields` a record carries (`extra={"fields": {...}}`, as the access log's)."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            doc.update(fields)
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure(level: str = "INFO", fmt: str = "text", file: str | None = None) -> None:
    """Install the proxy's handler on the root logger; calling again replaces it."""
    root = logging.getLogger()
    for old in list(root.handlers):
        if old.get_name() == _HANDLER_NAME:
            root.removeHandler(old)
            old.close()
    handler: logging.Handler
    handler = logging.FileHandler(file) if file else logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root.addHandler(handler)
    root.setLevel(level.upper())
    # urllib3 logs every new connection at DEBUG; keep it to warnings unless asked. Its
    # connection logger warns, with a traceback, of every malformed upstream header: an
    # origin could flood the log (the fetch itself reports what matters).
    logging.getLogger("urllib3").setLevel(max(root.level, logging.WARNING))
    logging.getLogger("urllib3.connection").setLevel(logging.ERROR)
