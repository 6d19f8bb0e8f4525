"""Purge markers against a real Redis: a store refuses what a purge since its start removed."""

import pytest
import redis
from redis.crc import key_slot

from proxy.store.connection import RedisHealth, make_client
from proxy.store.fetch_lock import Held, lock_key, slot_tag
from proxy.store.purge_marker import SEQUENCE, PurgeMarkers, marker_key, slot_key

# Keys with a hash tag, without one, and holding a '}' but no tag.
KEYS = ["rp:k", "rp:" + "ab" * 32, "rp:user{42}:home", "rp:{open", "rp:a}b", "rp:}{"]


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
    start = markers.start("rp:k")
    assert markers.store("rp:k", b"\x00\xffvalue", 60, start) is True
    assert (r.get("rp:k"), r.ttl("rp:k")) == (b"\x00\xffvalue", 60)


def test_a_store_after_a_purge_of_its_key_is_refused(markers, r):
    r.set("rp:k", b"old")
    start = markers.start("rp:k")
    assert markers.purge(["rp:k"]) == 1
    assert markers.store("rp:k", b"older answer", 60, start) is False
    assert r.exists("rp:k") == 0


def test_a_purge_before_the_start_does_not_refuse(markers, r):
    markers.purge(["rp:k"])
    start = markers.start("rp:k")
    assert markers.store("rp:k", b"new", 60, start) is True
    assert r.get("rp:k") == b"new"


def test_a_purge_of_another_key_does_not_refuse(markers, r):
    start = markers.start("rp:k")
    markers.purge(["rp:other"])
    assert markers.store("rp:k", b"v", 60, start) is True


def test_a_purged_mark_refuses_the_stores_that_name_it(markers, r):
    # How a purge by tag can use the same markers: a mark of the tag in the entry's slot.
    tag = slot_key("rp:", key_slot(b"rp:tagged"), "\x00tag:news")
    start, other_start = markers.start("rp:tagged"), markers.start("rp:untagged")
    assert markers.purge([], marks=[tag]) == 0
    assert markers.store("rp:tagged", b"v", 60, start, marks=[tag]) is False
    assert markers.store("rp:untagged", b"v", 60, other_start) is True
    assert (r.exists("rp:tagged"), r.exists("rp:untagged")) == (0, 1)


def test_a_mark_outside_the_entrys_slot_is_refused_before_any_write(markers, r):
    elsewhere = slot_key("rp:", (key_slot(b"rp:k") + 1) % 16384, "\x00tag:news")
    with pytest.raises(ValueError, match="not in the hash slot of 'rp:k'"):
        markers.store("rp:k", b"v", 60, markers.start("rp:k"), marks=[elsewhere])
    assert r.exists("rp:k") == 0


def test_a_store_releases_the_fetch_lock_it_holds_in_the_same_script(markers, r):
    lock = Held(lock_key("rp:k", "0123456789abcdef"), "token")
    r.set(lock.key, "token", px=60_000)
    start = markers.start("rp:k")
    assert markers.store("rp:k", b"value", 60, start, lock=lock) is True
    assert (r.get("rp:k"), r.exists(lock.key), lock.released) == (b"value", 0, True)


def test_a_store_refused_by_a_purge_still_releases_its_fetch_lock(markers, r):
    lock = Held(lock_key("rp:k"), "token")
    r.set(lock.key, "token", px=60_000)
    start = markers.start("rp:k")
    markers.purge(["rp:k"])
    assert markers.store("rp:k", b"older answer", 60, start, lock=lock) is False
    assert (r.exists("rp:k"), r.exists(lock.key), lock.released) == (0, 0, True)


def test_a_store_leaves_a_fetch_lock_another_fetch_holds_now(markers, r):
    # Ours expired during the fetch and another process took it: theirs to release.
    lock = Held(lock_key("rp:k"), "ours")
    r.set(lock.key, "theirs", px=60_000)
    assert markers.store("rp:k", b"value", 60, markers.start("rp:k"), lock=lock) is True
    assert r.get(lock.key) == b"theirs"


def test_a_store_without_a_token_touches_no_lock(markers, r):
    r.set(lock_key("rp:k"), "", px=60_000)  # even one holding the empty token
    assert markers.store("rp:k", b"value", 60, markers.start("rp:k"), lock=Held(lock_key("rp:k"), ""))
    assert r.exists(lock_key("rp:k")) == 1


def test_a_store_refused_over_maxmemory_leaves_the_fetch_lock_to_its_caller(markers, r):
    lock = Held(lock_key("rp:k"), "token")
    r.set(lock.key, "token", px=60_000)
    start = markers.start("rp:k")
    r.config_set("maxmemory-policy", "noeviction")
    r.config_set("maxmemory", 1)  # the redis_url fixture puts both back
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        markers.store("rp:k", b"value", 60, start, lock=lock)
    assert (r.exists("rp:k"), r.get(lock.key), lock.released) == (0, b"token", False)


@pytest.mark.parametrize("pool", ["the proxy's pool", "a plain client"])
def test_a_store_on_a_redis_without_its_script_loads_it_and_stores(redis_url, r, timer, pool):
    client = make_client(redis_url) if pool == "the proxy's pool" else redis.Redis.from_url(redis_url)
    markers = PurgeMarkers(client, RedisHealth(client), "rp:", lifetime=20.0, timer=timer)
    lock = Held(lock_key("rp:k"), "token")
    r.set(lock.key, "token", px=60_000)
    start = markers.start("rp:k")
    r.script_flush()  # as a restarted Redis: EVALSHA answers NOSCRIPT
    assert markers.store("rp:k", b"value", 60, start, lock=lock) is True
    assert (r.get("rp:k"), r.exists(lock.key), lock.released) == (b"value", 0, True)
    client.close()


def test_a_fetch_lock_outside_the_entrys_slot_is_refused_before_any_write(markers, r):
    elsewhere = next(f"rp:o{i}" for i in range(100) if key_slot(f"rp:o{i}".encode()) != key_slot(b"rp:k"))
    lock = Held(lock_key(elsewhere), "token")
    r.set(lock.key, "token")
    with pytest.raises(ValueError, match="not in the hash slot of 'rp:k'"):
        markers.store("rp:k", b"v", 60, markers.start("rp:k"), lock=lock)
    assert (r.exists("rp:k"), r.get(lock.key)) == (0, b"token")


@pytest.mark.parametrize("key", KEYS)
def test_an_entry_its_marker_and_its_sequence_share_a_hash_slot(markers, key):
    slot = key_slot(key.encode())
    assert key_slot(marker_key(key).encode()) == slot
    assert key_slot(markers.sequence_key(key).encode()) == slot
    assert markers.sequence_key(key).startswith("rp:")  # under the prefix: /get/ refuses it


def test_a_prefix_with_an_unclosed_brace_still_puts_the_sequence_in_the_entrys_slot(r, timer):
    markers = PurgeMarkers(r, RedisHealth(r), "rp{", lifetime=20.0, timer=timer)
    for key in ["rp{k", "rp{a}b", "rp{"]:
        assert key_slot(markers.sequence_key(key).encode()) == key_slot(key.encode())


def test_each_slot_counts_its_own_purges(markers, r):
    one, other = "rp:k", next(f"rp:k{i}" for i in range(100) if key_slot(f"rp:k{i}".encode())
                               != key_slot(b"rp:k"))
    markers.purge([one])
    first = int(r.get(markers.sequence_key(one)))
    assert markers.purge([one, other]) == 0
    assert int(r.get(markers.sequence_key(one))) == first + 1
    assert r.get(marker_key(one)) == b"%d" % (first + 1)
    assert r.get(marker_key(other)) == r.get(markers.sequence_key(other))
    assert r.exists(markers.sequence_key(other)) == 1


def test_the_marker_lives_the_lifetime_and_the_sequence_is_not_a_client_key(markers, r):
    markers.purge(["rp:k"])
    assert 0 < r.pttl("{rp:k}\x00purged") <= 20_000
    assert r.pttl(markers.sequence_key("rp:k")) == -1
    assert markers.sequence_key("rp:k") == f"rp:{{{slot_tag(key_slot(b'rp:k'))}}}\x00purge-seq"
    assert "\x00" in SEQUENCE  # a client key has no control characters


def test_a_store_outlasting_half_the_marker_lifetime_is_refused(markers, r, timer):
    start = markers.start("rp:k")
    timer.now += 9.9
    assert markers.store("rp:k", b"v", 60, start) is True
    start = markers.start("rp:k2")
    timer.now += 10.0  # a purge's marker may be gone by now
    assert markers.store("rp:k2", b"v", 60, start) is False
    assert r.exists("rp:k2") == 0


@pytest.mark.parametrize("purged_after_the_loss", [False, True])
def test_a_lost_sequence_refuses_the_stores_begun_before(markers, r, purged_after_the_loss):
    markers.purge(["rp:k"])
    r.delete(marker_key("rp:k"))  # expired: that purge came before the fetch
    start = markers.start("rp:k")
    assert start.seq > 0
    r.delete(markers.sequence_key("rp:k"))  # evicted, say; a later purge would count from 1 again
    if purged_after_the_loss:
        markers.purge(["rp:k"])
    assert markers.store("rp:k", b"v", 60, start) is False
    assert r.exists("rp:k") == 0


def test_a_new_sequence_starts_from_the_server_clock_in_whole_microseconds(markers, r):
    markers.purge(["rp:k"])
    seq = r.get(markers.sequence_key("rp:k"))
    assert seq.isdigit() and int(seq) > 10**15  # after 2001 in microseconds, no exponent form
    assert r.get(marker_key("rp:k")) == seq


@pytest.mark.parametrize("key, marker, lock", [
    ("rp:k", "{rp:k}\x00purged", "{rp:k}\x00lock"),
    ("rp:user{42}:home", "rp:user{42}:home\x00purged", "rp:user{42}:home\x00lock"),
    ("rp:a}b", "{%s}rp:a}b\x00purged", "{%s}rp:a}b\x00lock"),
])
def test_the_marker_and_lock_names_the_readme_gives(key, marker, lock):
    tag = slot_tag(key_slot(key.encode()))
    assert (marker_key(key), lock_key(key)) == (marker.replace("%s", tag), lock.replace("%s", tag))
