"""Cluster and Sentinel settings, and the hash-slot placement of an entry's fetch lock (pure)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot

from load_env import load_settings
from proxy.errors import ConfigError
from proxy.store.fetch_lock import lock_key
from proxy.store.purge_marker import marker_key


def problems(environ: dict) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ, env_file=None)
    return caught.value.problems


def test_cluster_nodes_and_sentinels_are_read_as_address_lists():
    s = load_settings({"REDIS_CLUSTER_NODES": "10.0.0.1:7000, redis-b:7001,[::1]:7002"}, env_file=None)
    assert s.redis_cluster_nodes == ("10.0.0.1:7000", "redis-b:7001", "[::1]:7002")
    assert s.redis_configured is True
    s = load_settings({"REDIS_SENTINELS": "s1:26379,s2:26379", "REDIS_SENTINEL_MASTER": "main"},
                      env_file=None)
    assert (s.redis_sentinels, s.redis_sentinel_master) == (("s1:26379", "s2:26379"), "main")


@pytest.mark.parametrize("value", ["redis://a:7000", "a", "a:0", "a:65536", "a:7000/0", "::1:7000"])
def test_a_cluster_node_that_is_not_host_colon_port_is_refused(value):
    assert problems({"REDIS_CLUSTER_NODES": value}) == [
        f"REDIS_CLUSTER_NODES={value!r}: expected a comma-separated list of host:port (port 1 to 65535)"]


def test_only_one_way_to_reach_redis():
    assert problems({"REDIS_URL": "redis://a:6379/0", "REDIS_CLUSTER_NODES": "b:7000"}) == [
        "REDIS_URL or REDIS_HOST and REDIS_CLUSTER_NODES: expected only one way to reach Redis "
        "(a URL, a cluster or Sentinel)"]
    assert problems({"REDIS_CLUSTER_NODES": "b:7000", "REDIS_SENTINELS": "s:26379",
                     "REDIS_SENTINEL_MASTER": "m"}) == [
        "REDIS_CLUSTER_NODES and REDIS_SENTINELS: expected only one way to reach Redis "
        "(a URL, a cluster or Sentinel)"]


def test_sentinels_need_a_master_name_and_a_master_name_needs_sentinels():
    assert problems({"REDIS_SENTINELS": "s:26379"}) == [
        "REDIS_SENTINELS is set: expected REDIS_SENTINEL_MASTER, the name the sentinels monitor "
        "the primary under"]
    assert problems({"REDIS_SENTINEL_MASTER": "m"}) == [
        "REDIS_SENTINEL_MASTER is set: expected REDIS_SENTINELS (host:port of the sentinels) as well"]


@pytest.mark.parametrize("key", ["rp:" + "ab" * 32, "rp:user{42}:home", "rp:{open", "rp:a}b", "rp:}{"])
def test_an_entry_and_its_lock_share_a_hash_slot(key):
    assert key_slot(lock_key(key).encode()) == key_slot(key.encode())
    # The lock of one URL's fetch under the key too: the store's script releases it.
    assert key_slot(lock_key(key, "0123456789abcdef").encode()) == key_slot(key.encode())


@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40))
def test_any_key_keeps_its_lock_and_its_purge_marker_in_its_slot(key):
    key = "rp:" + key
    assert key_slot(lock_key(key).encode()) == key_slot(key.encode())
    assert key_slot(marker_key(key).encode()) == key_slot(key.encode())
    assert "\x00" in lock_key(key)  # no client key (control characters refused) names a lock
