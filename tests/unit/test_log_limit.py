"""LogLimiter: a repeated warning is written once per interval per kind, with the count held back."""

import logging

from proxy.log_limit import LogLimiter
from proxy.serving.access_log import masked_target


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_repeated_warning_is_written_once_per_interval_with_the_count_held_back(caplog):
    caplog.set_level(logging.WARNING, logger="limited")
    clock = Clock()
    limiter = LogLimiter(logging.getLogger("limited"), interval=10, clock=clock)

    written = [limiter.warning("down", "redis unreachable (%s)", "refused") for _ in range(5)]
    clock.now += 9.9
    written.append(limiter.warning("down", "redis unreachable (%s)", "refused"))
    clock.now += 0.1
    written.append(limiter.warning("down", "redis unreachable (%s)", "refused"))

    assert written == [True, False, False, False, False, False, True]
    assert [r.getMessage() for r in caplog.records] == [
        "redis unreachable (refused)",
        "redis unreachable (refused) (5 more like this in the last 10 s)"]


def test_kinds_are_limited_apart(caplog):
    caplog.set_level(logging.WARNING, logger="limited")
    limiter = LogLimiter(logging.getLogger("limited"), interval=10, clock=Clock())

    limiter.warning("upstream a:80", "a failed")
    limiter.warning("upstream b:80", "b failed")
    limiter.warning("upstream a:80", "a failed")

    assert [r.getMessage() for r in caplog.records] == ["a failed", "b failed"]


def test_a_level_the_logger_drops_is_not_counted(caplog):
    caplog.set_level(logging.WARNING, logger="limited")
    limiter = LogLimiter(logging.getLogger("limited"), interval=10, clock=Clock())
    assert limiter.info("refused port", "dropped") is False
    assert limiter._kinds == {}


def test_masked_target_keeps_the_path_and_the_query_names_and_masks_every_value():
    assert masked_target("/?url=http%3A%2F%2Fu%3Apw%40h%2Fp%3Fapi_key%3Dk&key=k") == "/?url=***&key=***"
    assert masked_target("/reset?reset_token=abc&api_key=xyz") == "/reset?reset_token=***&api_key=***"
    assert masked_target("/p?bare&empty=&a=b=c&&x") == "/p?***&empty=***&a=***&&***"
    plain = "/get/a@b"
    assert masked_target(plain) is plain  # no query: nothing to mask, not even copied
    assert masked_target("/p?") == "/p?"
