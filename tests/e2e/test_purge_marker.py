"""Purge markers against a real Redis: a store refuses what a purge since its start removed."""

import pytest

from proxy.store.connection import RedisHealth
from proxy.store.purge_marker import SEQUENCE, PurgeMarkers, marker_key


class FakeTimer:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def timer():
    return FakeTimer()


@pytest.fixture
def markers(r, timer):
    return PurgeMarkers(r, RedisHealth(r), "rp:", lifetime=20.0, timer=timer)


def test_a_store_with_no_purge_since_its_start_is_one_write_with_its_ttl(markers, r):
    start = markers.start()
    assert markers.store("rp:k", b"\x00\xffvalue", 60, start) is True
    assert (r.get("rp:k"), r.ttl("rp:k")) == (b"\x00\xffvalue", 60)


def test_a_store_after_a_purge_of_its_key_is_refused(markers, r):
    r.set("rp:k", b"old")
    start = markers.start()
    assert markers.purge(["rp:k"]) == 1
    assert markers.store("rp:k", b"older answer", 60, start) is False
    assert r.exists("rp:k") == 0


def test_a_purge_before_the_start_does_not_refuse(markers, r):
    markers.purge(["rp:k"])
    start = markers.start()
    assert markers.store("rp:k", b"new", 60, start) is True
    assert r.get("rp:k") == b"new"


def test_a_purge_of_another_key_does_not_refuse(markers, r):
    start = markers.start()
    markers.purge(["rp:other"])
    assert markers.store("rp:k", b"v", 60, start) is True


def test_a_purged_mark_refuses_the_stores_that_name_it(markers, r):
    tag = marker_key("rp:\x00tag:news")  # how a purge by tag can use the same markers
    start = markers.start()
    assert markers.purge([], marks=[tag]) == 0
    assert markers.store("rp:tagged", b"v", 60, start, marks=[tag]) is False
    assert markers.store("rp:untagged", b"v", 60, start) is True
    assert (r.exists("rp:tagged"), r.exists("rp:untagged")) == (0, 1)


def test_the_marker_lives_the_lifetime_and_the_sequence_is_not_a_client_key(markers, r):
    markers.purge(["rp:k"])
    assert 0 < r.pttl(marker_key("rp:k")) <= 20_000
    assert r.pttl("rp:" + SEQUENCE) == -1
    assert "\x00" in SEQUENCE  # a client key has no control characters


def test_a_store_outlasting_half_the_marker_lifetime_is_refused(markers, r, timer):
    start = markers.start()
    timer.now += 9.9
    assert markers.store("rp:k", b"v", 60, start) is True
    start = markers.start()
    timer.now += 10.0  # a purge's marker may be gone by now
    assert markers.store("rp:k2", b"v", 60, start) is False
    assert r.exists("rp:k2") == 0


def test_a_lost_sequence_refuses_the_stores_begun_before(markers, r):
    markers.purge(["rp:a"])
    start = markers.start()
    r.delete("rp:" + SEQUENCE)  # evicted, say; a later purge would count from 1 again
    markers.purge(["rp:k"])
    assert markers.store("rp:k", b"v", 60, start) is False
    assert r.exists("rp:k") == 0


def test_a_new_sequence_starts_from_the_server_clock_in_whole_microseconds(markers, r):
    markers.purge(["rp:k"])
    seq = r.get("rp:" + SEQUENCE)
    assert seq.isdigit() and int(seq) > 10**15  # after 2001 in microseconds, no exponent form
    assert r.get(marker_key("rp:k")) == seq
