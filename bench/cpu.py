"""CPU time a server spends per request: what throughput alone hides on a shared machine (wrk,
Redis and the server share the cores, so a row's requests/s moves with its neighbours, while
the server's own CPU per request does much less).

Read from /proc (Linux): user + system time of a process and of every process below it (the
proxy's parent and its workers; nginx's master and worker), in clock ticks (10 ms on most
kernels, so a row of thousands of requests is what gives it precision).
"""

import os

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as listed:
                found += [int(child) for child in listed.read().split()]
    except OSError:  # ended meanwhile, or no /proc
        pass
    return found


def _own_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            # After the command name in parentheses (which may hold spaces): utime, stime are
            # fields 14 and 15 of stat(5), the 12th and 13th after the ")".
            fields = stat.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    except (OSError, IndexError, ValueError):
        return 0.0


def tree_seconds(pid: int) -> float:
    """CPU seconds (user + system) used so far by `pid` and every process below it."""
    total, todo = 0.0, [pid]
    while todo:
        one = todo.pop()
        total += _own_seconds(one)
        todo += _children(one)
    return total


def available() -> bool:
    return os.path.exists(f"/proc/{os.getpid()}/stat")
