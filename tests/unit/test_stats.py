"""The dashboard's figures: the history (a point per 2 s, 5 minutes of them), the last 20
errors, the workers' histories merged, and a worker that does not answer left out after 1 s."""

import socket
import time

from proxy.log_limit import DEFAULT_INTERVAL
from proxy.process import command_line
from proxy.serving.stats import History, RecentErrors, merge_errors, merge_histories, quantile, series
from proxy.serving.worker_metrics import PEER_TIMEOUT, SOCKET_SUFFIX, WorkerPeers


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_the_history_keeps_a_point_per_2_s_for_5_minutes():
    clock = Clock()
    history = History(clock=clock)
    for second in range(400):
        history.record({"requests": float(second)})
        clock.now += 1
    points = history.points()
    assert len(points) == 150
    assert [t for t, _ in points[:2]] == [1100.0, 1102.0] and points[-1][0] == 1398.0
    assert points[-1][0] - points[0][0] == 298  # 5 minutes, a point per 2 s
    assert points[-1][1] == {"requests": 399.0}  # the latest totals of its instant


def test_only_the_last_20_errors_are_kept():
    errors = RecentErrors(clock=Clock())
    for status in range(500, 530):
        errors.add(status, "bad gateway", "detail", "/")
    assert [e["status"] for e in errors.items()] == list(range(510, 530))


def test_the_same_error_on_the_same_path_is_counted_once_with_first_and_last_seen():
    clock = Clock()
    errors = RecentErrors(clock=clock)
    errors.add(502, "bad gateway", "connection refused by 127.0.0.1:1", "/a")
    clock.now += 5
    errors.add(504, "gateway timeout", "timed out", "/b")
    clock.now += 5
    errors.add(502, "bad gateway", "connection refused by 127.0.0.1:1", "/a")
    errors.add(502, "bad gateway", "connection refused by 127.0.0.1:1", "/other")
    items = errors.items()
    assert [(e["path"], e["count"]) for e in items] == [("/b", 1), ("/a", 2), ("/other", 1)]
    a = items[1]
    assert (a["first"], a["time"]) == (clock.now - 10, clock.now)


def test_workers_errors_merge_by_kind_with_their_counts_summed():
    def item(path: str, count: int, first: float, last: float) -> dict:
        return {"status": 502, "error": "bad gateway", "detail": "d", "path": path, "count": count,
                "first": first, "time": last}

    merged = merge_errors([[item("/a", 2, 1.0, 5.0)], [item("/a", 3, 0.5, 4.0), item("/b", 1, 6.0, 6.0)]])
    assert merged == [item("/a", 5, 0.5, 5.0), item("/b", 1, 6.0, 6.0)]


def test_workers_histories_sum_as_step_functions():
    one = [(0.0, {"requests": 1.0}), (4.0, {"requests": 5.0})]
    two = [(2.0, {"requests": 10.0})]
    merged = merge_histories([one, two])
    assert [(t, totals["requests"]) for t, totals in merged] == [(0.0, 1.0), (2.0, 11.0), (4.0, 15.0)]
    assert [p["requests_per_s"] for p in series(merged)] == [5.0, 2.0]


def test_a_worker_that_does_not_answer_is_left_out_after_1_s(tmp_path):
    assert PEER_TIMEOUT == 1.0
    with socket.socket(socket.AF_UNIX) as silent:
        silent.bind(str(tmp_path / f"2{SOCKET_SUFFIX}"))
        silent.listen()  # connects, never answers
        started = time.monotonic()
        assert WorkerPeers(str(tmp_path), pid=1).gather() == []
        assert PEER_TIMEOUT <= time.monotonic() - started < PEER_TIMEOUT + 2


def test_the_stated_defaults():
    assert DEFAULT_INTERVAL == 10.0  # repeated warnings: once per 10 s
    assert command_line.DEFAULT_CONCURRENCY == 8
    assert command_line.parse(["warm", "f"]).concurrency == 8
    assert command_line.parse(["warm", "f", "--concurrency", "256"]).concurrency == 256


def test_one_request_an_interval_claims_the_history_point_however_many_are_due():
    now = [100.0]
    history = History(interval=2.0, clock=lambda: now[0])
    assert [history.claim() for _ in range(5)] == [True, False, False, False, False]
    now[0] = 101.9  # the same 2 s instant (100-102)
    assert history.claim() is False
    now[0] = 102.0
    assert [history.claim() for _ in range(3)] == [True, False, False]


def test_latency_quantiles_are_interpolated_in_their_bucket_as_histogram_quantile():
    inf = float("inf")
    # 100 observations: 50 at most 1 ms, 40 in (1, 2.5] ms, 9 in (2.5, 5] ms, 1 over 10 s.
    buckets = [(0.001, 50.0), (0.0025, 90.0), (0.005, 99.0), (10.0, 99.0), (inf, 100.0)]
    assert quantile(buckets, 0.5) == 0.001  # the 50th of 100: the top of the first bucket
    assert quantile(buckets, 0.25) == 0.0005  # from 0 in the first bucket
    assert abs(quantile(buckets, 0.9) - 0.0025) < 1e-12
    assert abs(quantile(buckets, 0.7) - 0.00175) < 1e-12  # halfway through (1, 2.5] ms
    assert quantile(buckets, 0.995) == 10.0  # in +Inf's: the highest finite bound
    assert quantile([(0.001, 0.0), (inf, 0.0)], 0.5) is None  # nothing observed
    assert quantile([], 0.5) is None
