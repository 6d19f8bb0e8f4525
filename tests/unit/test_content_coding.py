"""Accept-Encoding negotiation (RFC 9110 §12.5.3), the codings and the encoded ETag."""

import zlib

import pytest

from proxy.cache import compression


@pytest.mark.parametrize("header, coding, accepted", [
    (None, "zstd", False), ("", "zstd", False), ("zstd", "zstd", True), ("gzip", "zstd", False),
    ("gzip", "gzip", True), ("x-gzip", "gzip", True), ("*", "gzip", True), ("*;q=0", "zstd", False),
    ("zstd;q=0, *", "zstd", False), ("zstd;q=0.001", "zstd", True), ("br;q=1, zstd ; q=0.5", "zstd", True),
    ("identity", "zstd", False), ("zstd;q=0, zstd;q=1", "zstd", True),
])
def test_accepts_follows_q_values_and_the_star(header, coding, accepted):
    assert compression.accepts(header, coding) is accepted


@pytest.mark.parametrize("coding", ["gzip", "zstd"])
def test_encode_then_decode_is_the_body(coding):
    body = b"<p>hello</p>" * 1000
    assert compression.decode(compression.encode(body, coding), coding) == body


def test_decoding_bad_bytes_is_a_value_error():
    with pytest.raises(ValueError, match="bad zstd body"):
        compression.decode(b"not zstd", "zstd")


@pytest.mark.parametrize("etag, expected", [('"abc"', '"abc-zstd"'), ('W/"abc"', 'W/"abc-zstd"'),
                                            ("unquoted", "unquoted")])
def test_the_encoded_representation_has_its_own_etag(etag, expected):
    assert compression.encoded_etag(etag, "zstd") == expected


@pytest.mark.parametrize("content_type, coded, expected", [
    ("text/html; charset=utf-8", "", True), ("application/json", "", True),
    ("application/problem+json", "", True), ("image/svg+xml", "", True),
    ("text/css", "identity", True), ("application/javascript", "", True),
    ("image/png", "", False), ("application/zip", "", False), ("text/html", "gzip", False),
    ("", "", False),
])
def test_compressible_types(content_type, coded, expected):
    assert compression.compressible({"content-type": content_type,
                                     "content-encoding": coded}) is expected


@pytest.mark.parametrize("header, coded, expected", [
    ("gzip", lambda b: compression.encode(b, "gzip"), b"body"),
    ("x-gzip", lambda b: compression.encode(b, "gzip"), b"body"),
    ("deflate", lambda b: zlib.compress(b), b"body"),
    ("deflate", lambda b: zlib.compress(b)[2:-4], b"body"),  # raw deflate, as some servers send
    ("zstd, gzip", lambda b: compression.encode(compression.encode(b, "zstd"), "gzip"), b"body"),
    ("identity, gzip", lambda b: compression.encode(b, "gzip"), b"body"),
    ("br", lambda b: b, None), ("gzip, br", lambda b: b, None), ("x-custom", lambda b: b, None),
])
def test_decode_received_undoes_the_codings_in_reverse_order_or_none_for_one_it_cannot(
        header, coded, expected):
    assert compression.decode_received(coded(b"body"), header, 1024) == expected


@pytest.mark.parametrize("coding", ["gzip", "zstd"])
def test_decoding_stops_at_the_limit_without_decoding_the_rest(coding):
    bomb = compression.encode(b"\0" * (16 << 20), coding)  # 16 MiB in a few KiB
    assert compression.decode(bomb, coding, 16 << 20) == b"\0" * (16 << 20)
    with pytest.raises(compression.TooLarge, match=f"decodes to more than {1 << 20} bytes"):
        compression.decode(bomb, coding, 1 << 20)
