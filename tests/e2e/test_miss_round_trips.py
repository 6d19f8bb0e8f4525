"""What a cold miss costs Redis, counted by a real redis-server: round trips (INFO stats'
`total_reads_processed`: one read of the proxy's socket per round trip) and commands (INFO
commandstats, the scripts' own calls included); and the fetch lock taken with the reads in one
round trip, released by the store's script."""

from proxy.cache import keys as cache_keys
from proxy.store.connection import RedisHealth, make_client
from proxy.store.fetch_lock import FetchLock, lock_key
from servers import q, request, wait_until
from test_caching import fire, gated

# The entry's read (the hit path's); the lock, the entry again and the purge numbers (one
# pipeline); the store script, which releases the lock.
ROUND_TRIPS = 3
COMMANDS = 12  # GET, SET NX, 3 GET; EVALSHA: GET, GET, SET, EXISTS, GET, DEL


def counted(r, action):
    """What `action` cost Redis: (round trips, {command: calls}), INFO's own left out."""
    calls = {name: stat["calls"] for name, stat in r.info("commandstats").items()}
    reads = r.info("stats")["total_reads_processed"]
    action()
    # The second INFO stats is one read more; commandstats is read after it.
    trips = r.info("stats")["total_reads_processed"] - reads - 1
    after = {name: stat["calls"] for name, stat in r.info("commandstats").items()}
    used = {name.removeprefix("cmdstat_"): n - calls.get(name, 0) for name, n in after.items()
            if name != "cmdstat_info" and n != calls.get(name, 0)}
    return trips, used


def entry_lock(proxy, url: str, key: str) -> str:
    request_ = proxy.proxy.parse(url, key)
    return lock_key(request_.redis_key, cache_keys.url_digest(request_.canonical)[:16])


def warmed(make_proxy, upstream):
    """A proxy whose Redis connection is open and whose scripts are loaded (a first miss stored
    and one not: redis-py loads a script on its first NOSCRIPT), and no invalidation listener
    (its PINGs are round trips of their own)."""
    proxy = make_proxy(invalidation="ttl")
    assert request(proxy.port, q(upstream.serve("/warm", b"w"), "warm")).status == 200
    assert request(proxy.port, q(upstream.serve("/warm-unstored", b"w", status=500),
                                 "warm-unstored")).status == 500
    return proxy


def test_a_cold_miss_is_three_redis_round_trips_and_twelve_commands(upstream, make_proxy, r):
    url = upstream.serve("/cold", b"cold body", headers={"Cache-Control": "max-age=60"})
    proxy = warmed(make_proxy, upstream)
    answers = []
    trips, commands = counted(r, lambda: answers.append(request(proxy.port, q(url, "cold"))))
    assert (answers[0].status, answers[0].body, answers[0].headers["X-Cache"]) == (200, b"cold body", "MISS")
    assert upstream.hits["/cold"] == 1
    assert trips == ROUND_TRIPS
    assert commands == {"get": 7, "set": 2, "evalsha": 1, "exists": 1, "del": 1}
    assert sum(commands.values()) == COMMANDS
    assert 60 <= r.ttl("rp:cold") <= 60 + 3600  # freshness plus the stale window
    assert r.exists(entry_lock(proxy, url, "cold")) == 0  # released by the store's script


def test_a_miss_that_is_not_stored_is_three_round_trips_and_releases_its_lock(upstream, make_proxy, r):
    url = upstream.serve("/private", b"mine", headers={"Cache-Control": "no-store"})
    proxy = warmed(make_proxy, upstream)
    trips, commands = counted(r, lambda: request(proxy.port, q(url, "private")))
    # The entry's read, the lock with its reads, and the lock's release (no store to carry it).
    assert trips == ROUND_TRIPS
    assert commands == {"get": 5, "set": 1, "evalsha": 1, "del": 1}
    assert r.exists("rp:private", entry_lock(proxy, url, "private")) == 0


def test_a_store_a_purge_refused_releases_the_lock_in_its_script(upstream, make_proxy, r):
    url, gate = gated(upstream, "/racing", b"older answer")
    proxy = warmed(make_proxy, upstream)
    lock = entry_lock(proxy, url, "race")
    responses, _sent, threads = fire(proxy.port, q(url, "race"), 1)
    wait_until(lambda: upstream.hits["/racing"] == 1)  # the fetch is in flight, the lock held
    assert r.exists(lock) == 1
    assert request(proxy.port, "/?key=race", method="DELETE").json() == {"purged": 0}
    trips, commands = counted(r, lambda: (gate.set(), [t.join(10) for t in threads]))
    assert responses == [(200, b"older answer")]
    assert (trips, commands.get("evalsha"), commands.get("set")) == (1, 1, None)  # refused: no SET
    assert r.exists("rp:race", lock) == 0


def test_the_lock_is_taken_before_the_keys_read_with_it_in_one_round_trip(redis_url, r):
    client = make_client(redis_url)  # the proxy's: its pool sends a pipeline in one write
    locks = FetchLock(client, RedisHealth(client), hold=5.0)
    lock = lock_key("rp:k", "0123456789abcdef")
    r.set("rp:k", b"entry")
    client.ping()  # connected
    taken: list = []
    trips, commands = counted(r, lambda: taken.append(locks.acquire_reading(lock, [lock, "rp:k", "rp:none"])))
    token, values = taken[0]
    assert values == [token.encode(), b"entry", None]  # the GET of the lock follows its SET NX
    assert (trips, commands) == (1, {"set": 1, "get": 3})
    assert 0 < r.pttl(lock) <= 5000
    assert locks.acquire_reading(lock, ["rp:k"]) == (None, [b"entry"])  # held: another waits
    client.close()
