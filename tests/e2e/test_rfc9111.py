"""RFC 9111 from the client's side, table-driven: a scripted origin (status, header lines, body,
written byte for byte so dates and odd fields are exactly as given), the proxy on port 0 with
an injected clock, and per case the client's requests, the answers and the origin's count."""

import dataclasses

import pytest

from proxy.cache import entry as cache_entry
from proxy.cache.freshness import HEURISTIC_STATUSES, RFC, Policy
from proxy.cache.http_dates import format_http_date
from proxy.cache.request import ClientRequest
from servers import q, request

T0 = 1_800_000_000.0  # the injected clock's start; the origin's dates are relative to it
BODY = b"0123456789"


def at(offset: float) -> str:
    return format_http_date(T0 + offset)


@dataclasses.dataclass
class Reply:
    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = BODY
    interim: bytes = b""  # raw interim responses sent first (103 Early Hints)
    date: bool = True  # send Date: at(0)


@dataclasses.dataclass
class Step:
    advance: float = 0.0  # seconds the clock moves before this request
    send: dict[str, str] = dataclasses.field(default_factory=dict)
    status: int = 200
    body: bytes | None = BODY
    cache: str | None = None  # X-Cache
    expect: dict[str, str | None] = dataclasses.field(default_factory=dict)  # None: absent
    status_has: str = ""  # a substring of Cache-Status


@dataclasses.dataclass
class Case:
    id: str
    replies: list[Reply]
    steps: list[Step]
    hits: int
    policy: dict = dataclasses.field(default_factory=dict)
    proxy: dict = dataclasses.field(default_factory=dict)
    stored: bool | None = None  # whether an entry is in Redis at the end


def scripted(upstream, path: str, replies: list[Reply]) -> str:
    """The origin answers `path` with each reply in turn, the last one from then on."""
    served = []

    def route(handler):
        reply = replies[min(len(served), len(replies) - 1)]
        served.append(reply)
        lines = [f"HTTP/1.1 {reply.status} X"]
        if reply.date:
            lines.append(f"Date: {at(0)}")
        lines += [f"{name}: {value}" for name, value in reply.headers]
        if reply.status not in (204, 304):
            lines.append(f"Content-Length: {len(reply.body)}")
        lines.append("Connection: close")
        handler.close_connection = True
        handler.wfile.write(reply.interim + ("\r\n".join(lines) + "\r\n\r\n").encode()
                            + (b"" if reply.status in (204, 304) else reply.body))

    return upstream.route(path, route)


CC = "Cache-Control"
E2E = (("X-Frame-Options", "DENY"), ("Content-Security-Policy", "default-src 'self'"),
       ("Content-Location", "/canonical"), ("Link", "</s.css>; rel=preload"),
       ("Content-Disposition", 'attachment; filename="a.txt"'))
CASES = [
    # §4.2.1 explicit freshness, and its oddities
    Case("max-age", [Reply(headers=((CC, "max-age=60"),))],
         [Step(cache="MISS"), Step(59, cache="HIT", expect={"Age": "59"}), Step(2, cache="MISS")], 2),
    Case("s-maxage-wins-over-max-age", [Reply(headers=((CC, "max-age=600, s-maxage=5"),))],
         [Step(cache="MISS"), Step(4, cache="HIT"), Step(2, cache="MISS")], 2),
    Case("max-age-negative-is-stale", [Reply(headers=((CC, "max-age=-1"),))],
         [Step(cache="MISS"), Step(cache="MISS")], 2),
    Case("max-age-repeated-disagreeing-is-stale", [Reply(headers=((CC, "max-age=60, max-age=10"),))],
         [Step(cache="MISS"), Step(1, cache="MISS")], 2),
    Case("max-age-repeated-agreeing-and-quoted", [Reply(headers=((CC, 'max-age=60, max-age="60"'),))],
         [Step(cache="MISS"), Step(30, cache="HIT")], 1),
    Case("max-age-in-two-field-lines", [Reply(headers=((CC, "public"), (CC, "max-age=60")))],
         [Step(cache="MISS"), Step(30, cache="HIT")], 1),
    Case("expires-minus-date", [Reply(headers=(("Expires", at(100)),))],
         [Step(cache="MISS"), Step(99, cache="HIT"), Step(2, cache="MISS")], 2),
    Case("expires-rfc850-form", [Reply(headers=(("Expires", "Friday, 15-Jan-27 08:01:40 GMT"),))],
         [Step(cache="MISS"), Step(50, cache="HIT")], 1),
    Case("expires-asctime-form", [Reply(headers=(("Expires", "Fri Jan 15 08:01:40 2027"),))],
         [Step(cache="MISS"), Step(50, cache="HIT")], 1),
    Case("expires-invalid-is-stale", [Reply(headers=(("Expires", "0"),))],
         [Step(cache="MISS"), Step(cache="MISS")], 2),
    Case("expires-not-imf-fixdate-is-stale", [Reply(headers=(("Expires", "2027-01-15T08:00:00Z"),))],
         [Step(cache="MISS"), Step(cache="MISS")], 2),
    Case("max-age-wins-over-expires", [Reply(headers=(("Expires", "0"), (CC, "max-age=60")))],
         [Step(cache="MISS"), Step(30, cache="HIT")], 1),
    # CACHE_TTL (3600 here) caps explicit freshness only with ttl_caps_origin (CACHE_TTL_CAPS_ORIGIN)
    Case("max-age-past-cache-ttl-is-capped", [Reply(headers=((CC, "max-age=7200"),))],
         [Step(cache="MISS"), Step(3599, cache="HIT"), Step(2, cache="MISS")], 2),
    Case("max-age-past-cache-ttl-is-kept-when-it-caps-nothing", [Reply(headers=((CC, "max-age=7200"),))],
         [Step(cache="MISS"), Step(7199, cache="HIT"), Step(2, cache="MISS")], 2,
         policy={"ttl_caps_origin": False}),
    Case("expires-in-9999-is-at-most-2-to-the-31-seconds",
         [Reply(headers=(("Expires", "Fri, 31 Dec 9999 23:59:59 GMT"),))],
         [Step(cache="MISS"), Step(2**31 - 1, cache="HIT"), Step(2, cache="MISS")], 2,
         policy={"ttl_caps_origin": False}),
    # §4.2.3 / §5.1 Age
    Case("age-list-uses-its-first-member", [Reply(headers=(("Age", "7200, 0"), (CC, "max-age=3600")))],
         [Step(cache="MISS", expect={"Age": "7200"}), Step(cache="MISS")], 2),
    Case("age-counts-against-max-age", [Reply(headers=(("Age", "30"), (CC, "max-age=60")))],
         [Step(cache="MISS", expect={"Age": "30"}), Step(29, cache="HIT", expect={"Age": "59"}),
          Step(2, cache="MISS")], 2),
    Case("age-invalid-is-ignored", [Reply(headers=(("Age", "-5"), (CC, "max-age=60")))],
         [Step(cache="MISS", expect={"Age": "0"}), Step(59, cache="HIT")], 1),
    Case("age-apparent-from-date", [Reply(headers=((CC, "max-age=60"), ("Date", at(-50))), date=False)],
         [Step(cache="MISS", expect={"Age": "50"}), Step(9, cache="HIT"), Step(2, cache="MISS")], 2),
    # RFC 9213 targeted fields
    Case("cdn-cache-control-wins", [Reply(headers=((CC, "no-store"), ("CDN-Cache-Control", "max-age=100")))],
         [Step(cache="MISS", expect={"Cdn-Cache-Control": "max-age=100"}), Step(99, cache="HIT")], 1),
    Case("proxy-targeted-field-wins-over-cdn",
         [Reply(headers=(("CDN-Cache-Control", "max-age=100"), ("RedisProxy-Cache-Control", "max-age=10")))],
         [Step(cache="MISS"), Step(9, cache="HIT"), Step(2, cache="MISS")], 2),
    Case("targeted-field-ignores-expires",
         [Reply(headers=(("Expires", "0"), ("CDN-Cache-Control", "max-age=100")))],
         [Step(cache="MISS"), Step(50, cache="HIT")], 1),
    # RFC 9213 §2.1: a targeted field that is not a valid Dictionary (RFC 8941) is ignored whole
    Case("cdn-cache-control-not-a-dictionary-leaves-no-store",
         [Reply(headers=(("CDN-Cache-Control", "max-age=10000, &&&&&"), (CC, "no-store")))],
         [Step(cache="MISS"), Step(cache="MISS")], 2, stored=False),
    Case("cdn-cache-control-max-age-as-a-string-leaves-no-store",
         [Reply(headers=(("CDN-Cache-Control", 'max-age="10000"'), (CC, "no-store")))],
         [Step(cache="MISS"), Step(cache="MISS")], 2, stored=False),
    Case("cdn-cache-control-extension-and-parameters-are-valid",
         [Reply(headers=(("CDN-Cache-Control", "foobar, max-age=100;x=1, y=(a 1)"), (CC, "no-store")))],
         [Step(cache="MISS"), Step(99, cache="HIT"), Step(2, cache="MISS")], 2),
    # §4.2.2 heuristic freshness and the two defaults
    Case("rfc-no-freshness-no-validator-not-stored", [Reply()],
         [Step(cache="MISS"), Step(cache="MISS")], 2, policy={"default_freshness": RFC}, stored=False),
    Case("ttl-no-freshness-kept-for-cache-ttl", [Reply()],
         [Step(cache="MISS"), Step(3599, cache="HIT"), Step(2, cache="MISS")], 2),
    Case("rfc-validator-only-is-revalidated-before-use",
         [Reply(headers=(("ETag", '"a"'),)), Reply(304, (("ETag", '"a"'),), b"")],
         [Step(cache="MISS"), Step(cache="HIT", status_has="fwd=stale; fwd-status=304")], 2,
         policy={"default_freshness": RFC, "store_statuses": frozenset({200, 202})}),
    Case("rfc-heuristic-not-for-202",
         [Reply(202, (("Last-Modified", at(-1000)),)), Reply(202, (("Last-Modified", at(-1000)),))],
         [Step(status=202, cache="MISS"), Step(1, status=202, cache="MISS", status_has="fwd=stale; fwd-status=202")], 2,
         policy={"default_freshness": RFC, "store_statuses": frozenset({202})}),
    Case("rfc-heuristic-for-202-when-public",
         [Reply(202, (("Last-Modified", at(-1000)), (CC, "public")))],
         [Step(status=202, cache="MISS"), Step(99, status=202, cache="HIT"), Step(2, status=202, cache="MISS")], 2,
         policy={"default_freshness": RFC, "store_statuses": frozenset({202})}),
    Case("rfc-heuristic-capped", [Reply(headers=(("Last-Modified", at(-10**7)),))],
         [Step(cache="MISS"), Step(499, cache="HIT"), Step(2, cache="MISS")], 2,
         policy={"default_freshness": RFC, "heuristic_max": 500}),
    Case("rfc-heuristic-fraction-setting", [Reply(headers=(("Last-Modified", at(-1000)),))],
         [Step(cache="MISS"), Step(499, cache="HIT"), Step(2, cache="MISS")], 2,
         policy={"default_freshness": RFC, "heuristic_fraction": 0.5}),
    # §4.1 Vary in the URL role: every client's upstream request is the same, so one variant
    Case("vary-on-a-request-header-matches-every-client",
         [Reply(headers=((CC, "max-age=60"), ("Vary", "Accept-Language")))],
         [Step(cache="MISS"), Step(send={"Accept-Language": "de"}, cache="HIT", expect={"Vary": "Accept-Language"})], 1),
    Case("vary-star-never-matches", [Reply(headers=((CC, "max-age=60"), ("Vary", "*")))],
         [Step(cache="MISS"), Step(cache="MISS")], 2, stored=False),
    # §3.2 / §4.3.4 a 304 updates the stored headers
    Case("304-updates-stored-headers",
         [Reply(headers=((CC, "max-age=1"), ("ETag", '"a"'), ("X-Version", "1"), ("Content-Type", "text/plain"))),
          Reply(304, ((CC, "max-age=60"), ("ETag", '"a"'), ("X-Version", "2"), ("Content-Type", "text/html")), b"")],
         [Step(cache="MISS", expect={"X-Version": "1"}),
          Step(2, cache="HIT", expect={"X-Version": "2", "Content-Type": "text/plain", "Cache-Control": "max-age=60"}),
          Step(50, cache="HIT", expect={"X-Version": "2"})], 2),
    # §3.1 / RFC 9110 §7.6.1: every end-to-end header kept, hop-by-hop ones not
    Case("end-to-end-headers-kept-hop-by-hop-dropped",
         [Reply(headers=((CC, "max-age=60"), ("X-Hop", "1"), ("Keep-Alive", "timeout=5"),
                         ("Connection", "X-Hop"), *E2E))],
         [Step(cache=cache, expect={**{name.title(): value for name, value in E2E},
                                    "Date": at(0), "X-Hop": None, "Keep-Alive": None})
          for cache in ("MISS", "HIT")], 1),
    Case("date-added-when-the-origin-sends-none", [Reply(headers=((CC, "max-age=60"),), date=False)],
         [Step(cache="MISS", expect={"Date": at(0)}), Step(5, cache="HIT", expect={"Date": at(0), "Age": "5"})], 1),
    Case("header-block-over-the-count-is-not-stored",
         [Reply(headers=tuple((f"X-F{i}", "v") for i in range(6)) + ((CC, "max-age=60"),))],
         [Step(cache="MISS", expect={"X-F5": "v"}, status_has="detail=headers-too-large"), Step(cache="MISS")], 2,
         policy={"max_headers": 6}, stored=False),
    Case("header-block-at-the-count-is-stored",
         [Reply(headers=tuple((f"X-F{i}", "v") for i in range(4)) + ((CC, "max-age=60"),))],
         [Step(cache="MISS", status_has="stored"), Step(cache="HIT")], 1, policy={"max_headers": 6}),
    Case("header-block-over-the-bytes-is-not-stored",
         [Reply(headers=(("X-Big", "v" * 200), (CC, "max-age=60")))],
         [Step(cache="MISS", status_has="detail=headers-too-large"), Step(cache="MISS")], 2,
         policy={"max_header_bytes": 200}, stored=False),
    # §5.2.2.4 no-cache="f", §5.2.2.7 private="f", §5.2.2.3 must-understand
    Case("no-cache-field-omitted-on-reuse",
         [Reply(headers=((CC, 'max-age=60, no-cache="X-Secret"'), ("X-Secret", "s")))],
         [Step(cache="MISS", expect={"X-Secret": "s"}), Step(cache="HIT", expect={"X-Secret": None})], 1),
    Case("private-field-not-stored",
         [Reply(headers=((CC, 'max-age=60, private="X-User"'), ("X-User", "alice")))],
         [Step(cache="MISS", expect={"X-User": "alice"}), Step(cache="HIT", expect={"X-User": None})], 1),
    Case("bare-private-not-stored", [Reply(headers=((CC, "max-age=60, private"),))],
         [Step(cache="MISS"), Step(cache="MISS")], 2, stored=False),
    Case("must-understand-overrides-no-store", [Reply(headers=((CC, "max-age=60, must-understand, no-store"),))],
         [Step(cache="MISS"), Step(cache="HIT")], 1),
    Case("must-understand-with-a-status-not-understood",
         [Reply(202, ((CC, "max-age=60, must-understand"),))],
         [Step(status=202, cache="MISS"), Step(status=202, cache="MISS")], 2,
         policy={"store_statuses": frozenset({202})}, stored=False),
    # RFC 5861 from the response
    Case("response-stale-while-revalidate", [Reply(headers=((CC, "max-age=1, stale-while-revalidate=30"),))],
         [Step(cache="MISS"), Step(5, cache="STALE", status_has="detail=stale-while-revalidate")], None),
    Case("response-stale-if-error",
         [Reply(headers=((CC, "max-age=1, stale-if-error=10"),)), Reply(503, (), b"down")],
         [Step(cache="MISS"), Step(5, cache="STALE", status_has="detail=stale-if-error"),
          Step(20, status=503, body=b"down", cache="MISS")], 3),
    # RFC 5861 §4: stale-if-error (the STALE_IF_ERROR setting) stands in with a stored success,
    # never with a stored error: the origin's new 5xx is the answer
    Case("stale-if-error-setting-serves-a-stale-200-for-a-503",
         [Reply(headers=(("Last-Modified", at(-1000)),)), Reply(503, (), b"down")],
         [Step(cache="MISS"), Step(150, cache="STALE", status_has="detail=stale-if-error")], 2,
         policy={"default_freshness": RFC}, proxy={"stale_if_error": 300}),
    Case("stale-if-error-setting-never-serves-a-stored-503-for-a-503",
         [Reply(503, (("Last-Modified", at(-1000)),), b"down 1"),
          Reply(503, (("Last-Modified", at(-1000)),), b"down 2")],
         [Step(status=503, body=b"down 1", cache="MISS", status_has="stored"),
          Step(1, status=503, body=b"down 2", cache="MISS", status_has="fwd=stale; fwd-status=503")], 2,
         policy={"default_freshness": RFC, "store_statuses": frozenset({200, 503})},
         proxy={"stale_if_error": 300}),
    Case("stale-if-error-setting-never-serves-a-stored-404-for-a-503",
         [Reply(404, (("Last-Modified", at(-1000)),), b"gone"), Reply(503, (), b"down")],
         [Step(status=404, body=b"gone", cache="MISS", status_has="stored"),
          Step(150, status=503, body=b"down", cache="MISS", status_has="fwd=stale; fwd-status=503")], 2,
         policy={"default_freshness": RFC, "store_statuses": frozenset({200, 404})},
         proxy={"stale_if_error": 300}),
    # RFC 9110 §15.2: interim responses
    Case("103-before-200", [Reply(headers=((CC, "max-age=60"),),
                                  interim=b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n")],
         [Step(cache="MISS"), Step(cache="HIT")], 1),
    Case("100-and-102-before-200", [Reply(headers=((CC, "max-age=60"),),
                                          interim=b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n")],
         [Step(cache="MISS")], 1),
    # RFC 9111 §5.2.1 request directives
    Case("request-no-cache-revalidates",
         [Reply(headers=((CC, "max-age=60"), ("ETag", '"a"'))), Reply(304, (("ETag", '"a"'),), b"")],
         [Step(cache="MISS"), Step(send={CC: "no-cache"}, cache="HIT", status_has="fwd=request; fwd-status=304")], 2),
    Case("request-max-age-0-revalidates",
         [Reply(headers=((CC, "max-age=60"), ("ETag", '"a"'))), Reply(304, (("ETag", '"a"'),), b"")],
         [Step(cache="MISS"), Step(send={CC: "max-age=0"}, status_has="fwd=request; fwd-status=304")], 2),
    Case("pragma-no-cache-without-cache-control",
         [Reply(headers=((CC, "max-age=60"),))],
         [Step(cache="MISS"), Step(send={"Pragma": "no-cache"}, cache="MISS", status_has="fwd=request"),
          Step(send={"Pragma": "no-cache", CC: "max-age=100"}, cache="HIT")], 2),
    Case("request-max-age", [Reply(headers=((CC, "max-age=60"),))],
         [Step(cache="MISS"), Step(20, send={CC: "max-age=30"}, cache="HIT"),
          Step(20, send={CC: "max-age=30"}, cache="MISS")], 2),
    Case("request-min-fresh", [Reply(headers=((CC, "max-age=60"),))],
         [Step(cache="MISS"), Step(20, send={CC: "min-fresh=30"}, cache="HIT"),
          Step(20, send={CC: "min-fresh=30"}, cache="MISS")], 2),
    Case("request-max-stale", [Reply(headers=((CC, "max-age=10"),))],
         [Step(cache="MISS"), Step(15, send={CC: "max-stale=10"}, cache="STALE", status_has="detail=max-stale"),
          Step(send={CC: "max-stale"}, cache="STALE"), Step(10, send={CC: "max-stale=10"}, cache="MISS")], 2),
    Case("request-max-stale-refused-by-must-revalidate", [Reply(headers=((CC, "max-age=10, must-revalidate"),))],
         [Step(cache="MISS"), Step(15, send={CC: "max-stale"}, cache="MISS")], 2),
    Case("request-no-store", [Reply(headers=((CC, "max-age=60"),))],
         [Step(send={CC: "no-store"}, cache="MISS", status_has="fwd=request"), Step(cache="MISS", status_has="stored"),
          Step(send={CC: "no-store"}, cache="MISS")], 3),
    Case("only-if-cached-stored", [Reply(headers=((CC, "max-age=60"),))],
         [Step(cache="MISS"), Step(send={CC: "only-if-cached"}, cache="HIT")], 1),
    # RFC 9110 §13.2.2 client conditionals against the stored response
    Case("if-none-match-304",
         [Reply(headers=((CC, "max-age=60"), ("ETag", '"a"'), ("X-Frame-Options", "DENY")))],
         [Step(cache="MISS"), Step(send={"If-None-Match": '"x", W/"a"'}, status=304, body=b"", cache="HIT",
                                   expect={"ETag": '"a"', "Cache-Control": "max-age=60", "Date": at(0),
                                           "X-Frame-Options": None, "Content-Length": None})], 1),
    Case("if-none-match-star", [Reply(headers=((CC, "max-age=60"), ("ETag", '"a"')))],
         [Step(send={"If-None-Match": "*"}, status=304, body=b"", cache="MISS")], 1),
    Case("if-none-match-wins-over-if-modified-since",
         [Reply(headers=((CC, "max-age=60"), ("ETag", '"a"'), ("Last-Modified", at(-100))))],
         [Step(cache="MISS"), Step(send={"If-None-Match": '"b"', "If-Modified-Since": at(0)}, cache="HIT")], 1),
    Case("if-modified-since",
         [Reply(headers=((CC, "max-age=60"), ("Last-Modified", at(-100))))],
         [Step(cache="MISS"), Step(send={"If-Modified-Since": at(-100)}, status=304, body=b"", cache="HIT"),
          Step(send={"If-Modified-Since": at(-101)}, cache="HIT"),
          Step(send={"If-Modified-Since": "yesterday"}, cache="HIT")], 1),
    # RFC 9110 §14 Range on a stored full response
    Case("range-single", [Reply(headers=((CC, "max-age=60"),))],
         [Step(send={"Range": "bytes=2-4"}, status=206, body=b"234", cache="MISS",
               expect={"Content-Range": "bytes 2-4/10", "Content-Length": "3"}),
          Step(send={"Range": "bytes=-3"}, status=206, body=b"789", cache="HIT", expect={"Content-Range": "bytes 7-9/10"}),
          Step(send={"Range": "bytes=8-"}, status=206, body=b"89", expect={"Content-Range": "bytes 8-9/10"}),
          Step(send={"Range": "bytes=0-1,4-5"}, status=200, body=BODY, expect={"Content-Range": None}),
          Step(send={"Range": "bytes=20-"}, status=416, body=None, expect={"Content-Range": "bytes */10"}),
          Step(send={"Range": "bytes=2-4", "If-Range": '"old"'}, status=200, body=BODY)], 1),
    Case("range-206-from-upstream-not-stored",
         [Reply(206, (("Content-Range", "bytes 0-2/10"), (CC, "max-age=60")), b"012")],
         [Step(status=206, body=b"012", cache="MISS", expect={"Content-Range": "bytes 0-2/10"}),
          Step(status=206, body=b"012", cache="MISS")], 2, stored=False),
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_rfc9111_conformance(case: Case, upstream, make_proxy, r):
    now = [T0]
    policy = Policy(ttl=3600, **case.policy)
    proxy = make_proxy(ttl=3600, stale_ttl=300, clock=lambda: now[0], policy=policy, **case.proxy)
    url = scripted(upstream, "/c", case.replies)
    for number, step in enumerate(case.steps):
        now[0] += step.advance
        got = request(proxy.port, q(url, "c"), headers=step.send)
        where = f"step {number}: {got!r} {dict(got.headers)}"
        assert got.status == step.status, where
        if step.body is not None:
            assert got.body == step.body, where
        if step.cache is not None:
            assert got.headers["X-Cache"] == step.cache, where
        for name, value in step.expect.items():
            assert got.headers.get(name) == value, f"{name}: {where}"
        assert step.status_has in got.headers["Cache-Status"], where
    if case.hits is not None:
        assert upstream.hits["/c"] == case.hits
    if case.stored is not None:
        assert bool(r.exists("rp:c")) == case.stored


@pytest.mark.parametrize("targeted", [
    "max-age=1, &&&", 'max-age="1"', "max-age=1.0", "max-age=-1", "Max-Age=1", "max-age =1",
    "max-age= 1", "max-age=1,", "no-store=?0", "no-store=1", "private=x-user, no-store"])
def test_an_invalid_cdn_cache_control_is_ignored_and_cache_control_governs(targeted, upstream,
                                                                           make_proxy):
    """RFC 9213 §2.1: parsed as a Structured Fields Dictionary (RFC 8941); one that does not
    parse, or names a known directive with a value of the wrong type, is ignored as a whole."""
    now = [T0]
    proxy = make_proxy(clock=lambda: now[0], policy=Policy(ttl=3600))
    url = scripted(upstream, "/t", [Reply(headers=(("CDN-Cache-Control", targeted), (CC, "max-age=100")))])
    for advance, cache in ((0, "MISS"), (50, "HIT"), (51, "MISS")):
        now[0] += advance
        got = request(proxy.port, q(url, "t"))
        assert (got.status, got.body, got.headers["X-Cache"]) == (200, BODY, cache)
        assert got.headers["CDN-Cache-Control"] == targeted  # relayed as it came
    assert upstream.hits["/t"] == 2


@pytest.mark.parametrize("status", sorted(HEURISTIC_STATUSES - {206}))
def test_heuristic_freshness_for_each_heuristically_cacheable_status(status, upstream, make_proxy):
    now = [T0]
    proxy = make_proxy(clock=lambda: now[0], stale_ttl=300, policy=Policy(
        ttl=3600, default_freshness=RFC, store_statuses=frozenset({status})))
    url = scripted(upstream, "/h", [Reply(status, (("Last-Modified", at(-1000)),),
                                          b"" if status == 204 else BODY)])
    body = b"" if status == 204 else BODY
    for advance, cache in ((0, "MISS"), (99, "HIT"), (2, "MISS")):  # 10 % of 1000 s
        now[0] += advance
        got = request(proxy.port, q(url, "h"))
        assert (got.status, got.body, got.headers["X-Cache"]) == (status, body, cache)
    assert upstream.hits["/h"] == 2


def test_only_if_cached_with_nothing_stored_is_504_and_asks_nobody(upstream, make_proxy, r):
    proxy = make_proxy()
    url = scripted(upstream, "/o", [Reply()])
    got = request(proxy.port, q(url, "o"), headers={"Cache-Control": "only-if-cached"})
    assert got.status == 504 and got.headers["Content-Type"] == "application/json"
    assert got.json() == {"error": "not cached", "detail": (
        "the request says only-if-cached and no stored response satisfies it; send it "
        "without only-if-cached to fetch it")}
    assert upstream.hits["/o"] == 0 and r.exists("rp:o") == 0


def test_unsatisfiable_range_is_416_with_the_stored_size(upstream, make_proxy):
    proxy = make_proxy()
    url = scripted(upstream, "/r", [Reply(headers=(("Cache-Control", "max-age=60"),))])
    got = request(proxy.port, q(url, "r"), headers={"Range": "bytes=10-"})
    assert (got.status, got.headers["Content-Range"]) == (416, "bytes */10")
    assert got.json()["error"] == "range not satisfiable"


def test_vary_variants_are_selected_by_the_headers_sent_upstream(upstream, make_proxy, r):
    """The reverse-proxy mode fills ClientRequest.forwarded; the core keys variants by it."""
    proxy = make_proxy().proxy  # the real clock: the origin's Date is real time here

    def route(handler):
        language = handler.headers.get("Accept-Language", "none")
        handler.reply(200, language.encode(), {"Cache-Control": "max-age=60", "Vary": "Accept-Language"})

    url = upstream.route("/v", route)

    def ask(language: str):
        return proxy.fetch(url, "v", request=ClientRequest.of("GET", {}, {"Accept-Language": language}))

    first = ask("de")
    assert (first.body, first.cache) == (b"de", "MISS")
    assert (ask("de").body, ask("de").cache) == (b"de", "HIT")
    assert (ask("DE").body, ask("DE").cache) == (b"de", "HIT")  # §4.1: compared case-insensitively
    got = ask("en")
    assert (got.body, got.cache) == (b"en", "MISS")  # another variant: never the German one
    sent = {name.lower(): value for name, value in upstream.requests[-1][1].items()}
    assert upstream.hits["/v"] == 2 and sent["accept-language"] == "en"
    assert cache_entry.decode(r.get("rp:v")).vary == {"accept-language": "de"}  # kept: the first
    assert (ask("de").body, ask("de").cache, ask("en").body, ask("en").cache) == (b"de", "HIT", b"en", "HIT")
    assert upstream.hits["/v"] == 2
