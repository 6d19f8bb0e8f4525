"""`GET /dashboard`: one self-contained HTML page (inline style, script and SVG charts, no
external asset) that reads /stats every 2 s. The page is package data, read on first use."""

import functools
from importlib import resources

CONTENT_TYPE = "text/html; charset=utf-8"
# Nothing but the page's own inline style and script, and /stats on the same origin.
HEADERS = {"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store",
           "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; "
                                      "style-src 'unsafe-inline'; connect-src 'self'",
           "X-Content-Type-Options": "nosniff"}


@functools.cache
def page() -> bytes:
    return resources.files("proxy.serving").joinpath("dashboard.html").read_bytes()
