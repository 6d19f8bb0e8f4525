"""Throw-away Redis Cluster and Sentinel set-ups on loopback for the tests, stopped by pid."""

import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Callable

import redis

from proxy.errors import LauncherError
from proxy.store.launcher import RedisServer, free_port
from servers import wait_until

CLUSTER_NODE_ARGS = (
    "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
    # Short enough that a killed primary is noticed within the tests, and the other primaries
    # keep serving their slots while one is down.
    "--cluster-node-timeout", "1000", "--cluster-require-full-coverage", "no",
    # A replica's first sync starts at once, not after the default 5 s wait for more replicas.
    "--repl-diskless-sync-delay", "0",
)


# A cluster node also listens on its port + 10000 (the cluster bus), so redis-server refuses a
# port above 55535 with "exited with 1" (a fifth of Linux's ephemeral range, 32768-60999).
CLUSTER_BUS_OFFSET = 10000


def tools_missing() -> str:
    """Why the cluster tests cannot run here, or "" when they can."""
    missing = [name for name in ("redis-server", "redis-cli") if not shutil.which(name)]
    return f"{' and '.join(missing)} not on PATH (Debian: apt-get install redis-server redis-tools)" \
        if missing else ""


def start_on_free_port(make: Callable[[], RedisServer], attempts: int = 3) -> RedisServer:
    """Start a server; another process may take the free port first: then try another one."""
    for attempt in range(attempts):
        server = make()
        try:
            return server.start()
        except LauncherError:
            server.cleanup()
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def cluster_node_port(pick: Callable[[], int] = free_port, attempts: int = 100) -> int:
    """A free port whose cluster bus port is a port, and free too (when asked)."""
    for _ in range(attempts):
        port = pick()
        if port + CLUSTER_BUS_OFFSET <= 65535 and _free(port + CLUSTER_BUS_OFFSET):
            return port
    raise LauncherError(f"no free port with a free cluster bus port in {attempts} tries")


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _poll(predicate, timeout: float, what: str, interval: float = 0.05):
    """servers.wait_until, saying what was waited for when it does not happen."""
    try:
        return wait_until(predicate, timeout, interval)
    except AssertionError as exc:
        raise RuntimeError(f"{what} not within {timeout} s") from exc


def _info_field(server: RedisServer, section: str, field: str) -> str:
    """One field of INFO `section` (or of CLUSTER INFO), "" when the server does not answer."""
    try:
        with redis.Redis(port=server.port, socket_timeout=1, decode_responses=True) as client:
            if section == "cluster":
                text = client.execute_command("CLUSTER", "INFO")
                fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
            else:
                fields = client.info(section)
            return str(fields.get(field, ""))
    except redis.RedisError:
        return ""


class Cluster:
    """`primaries` cluster-enabled redis-servers, joined by `redis-cli --cluster create`, each
    with `replicas` replicas. `nodes` are the primaries as created (a failover does not reorder
    them), `replicas` the others."""

    def __init__(self, primaries: int = 3, replicas: int = 0):
        self.primaries = primaries
        self.replica_count = replicas
        self.nodes: list[RedisServer] = []
        self.replicas: list[RedisServer] = []

    @property
    def seeds(self) -> tuple[str, ...]:
        return tuple(f"127.0.0.1:{node.port}" for node in self.nodes)

    @property
    def servers(self) -> list[RedisServer]:
        return self.nodes + self.replicas

    def start(self) -> "Cluster":
        try:
            for _ in range(self.primaries * (1 + self.replica_count)):
                self.nodes.append(start_on_free_port(
                    lambda: RedisServer(cluster_node_port(), extra_args=CLUSTER_NODE_ARGS)))
            every = tuple(f"127.0.0.1:{node.port}" for node in self.nodes)
            subprocess.run(["redis-cli", "--cluster", "create", *every, "--cluster-yes",
                            "--cluster-replicas", str(self.replica_count)],
                           check=True, capture_output=True, timeout=30)
            for node in self.nodes:
                _poll(lambda n=node: _info_field(n, "cluster", "cluster_state") == "ok", 20,
                      f"cluster_state:ok on port {node.port}")
            # Every node must know every slot's owner before a client asks one of them.
            _poll(self._agreed, 20, "every node agreeing on the slot map")
            if self.replica_count:
                servers = self.nodes
                self.nodes = [n for n in servers if _info_field(n, "replication", "role") == "master"]
                self.replicas = [n for n in servers if n not in self.nodes]
                for replica in self.replicas:
                    _poll(lambda r=replica: _info_field(r, "replication", "master_link_status") == "up",
                          20, f"the replica on port {replica.port} in sync")
        except BaseException:
            self.stop()
            raise
        return self

    def replica_of(self, primary: RedisServer) -> RedisServer | None:
        """A live replica in sync with `primary`, or None."""
        for replica in self.replicas:
            if replica.process is not None and \
                    _info_field(replica, "replication", "master_port") == str(primary.port) and \
                    _info_field(replica, "replication", "master_link_status") == "up":
                return replica
        return None

    def primary_with_replica(self) -> tuple[RedisServer, RedisServer]:
        """A live primary (as created) and its live replica, for a test to fail over."""
        for primary in self.nodes:
            replica = self.replica_of(primary) if primary.process is not None else None
            if replica is not None:
                return primary, replica
        raise LookupError("no primary with a live replica left")

    @staticmethod
    def kill(server: RedisServer) -> None:
        """SIGKILL by the pid this test started (a crash: no shutdown, no last words), then reap."""
        assert server.pid is not None
        os.kill(server.pid, signal.SIGKILL)
        server.stop()

    @staticmethod
    def promoted(server: RedisServer) -> bool:
        """Whether `server` (a replica) is now a primary serving slots."""
        return _info_field(server, "replication", "role") == "master" and \
            _info_field(server, "cluster", "cluster_state") == "ok"

    def _agreed(self) -> bool:
        maps = []
        for node in self.nodes:
            try:
                with redis.Redis(port=node.port, socket_timeout=1) as client:
                    slots = client.execute_command("CLUSTER", "SLOTS")
            except redis.RedisError:
                return False
            maps.append(sorted((s[0], s[1], s[2][1]) for s in slots))
        return all(m == maps[0] for m in maps) and sum(e - b + 1 for b, e, _p in maps[0]) == 16384

    def node_of(self, key: str) -> RedisServer:
        """The server that owns `key`'s slot, by asking the cluster."""
        live = next(n for n in self.servers if n.process is not None)
        with redis.Redis(port=live.port, socket_timeout=1) as client:
            slot = client.execute_command("CLUSTER", "KEYSLOT", key)
            for begin, end, primary, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if begin <= slot <= end:
                    return next(n for n in self.servers if n.port == primary[1])
        raise LookupError(key)

    def keys_on_each_node(self, prefix: str = "") -> list[str]:
        """One key per node: `prefix` + a short suffix landing on that node's slots."""
        found: dict[int, str] = {}
        for i in range(1000):
            key = f"{prefix}k{i}"
            found.setdefault(self.node_of(key).port, key)
            if len(found) == len(self.nodes):
                break
        return [found[node.port] for node in self.nodes]

    def stop(self) -> None:
        for node in self.servers:
            node.cleanup()


class SentinelServer(RedisServer):
    """`redis-server <conf> --sentinel` watching one primary, with short failover timings."""

    def __init__(self, master: str, master_port: int, down_after_ms: int = 500,
                 failover_timeout_ms: int = 2000):
        super().__init__()
        self.conf = os.path.join(self.dir, "sentinel.conf")
        with open(self.conf, "w") as conf:
            conf.write(f"sentinel monitor {master} 127.0.0.1 {master_port} 1\n"
                       f"sentinel down-after-milliseconds {master} {down_after_ms}\n"
                       f"sentinel failover-timeout {master} {failover_timeout_ms}\n"
                       f"sentinel parallel-syncs {master} 1\n")

    def command(self) -> list[str]:
        return [self.executable, self.conf, "--sentinel", "--port", str(self.port),
                "--bind", "127.0.0.1", "--dir", self.dir, "--daemonize", "no",
                "--loglevel", "warning"]


class SentinelSetup:
    """One primary, one replica, one sentinel (quorum 1)."""

    MASTER = "proxymaster"

    def __init__(self):
        self.primary: RedisServer | None = None
        self.replica: RedisServer | None = None
        self.sentinel: SentinelServer | None = None

    def start(self) -> "SentinelSetup":
        try:
            self.primary = primary = start_on_free_port(RedisServer)
            self.replica = start_on_free_port(
                lambda: RedisServer(extra_args=("--replicaof", "127.0.0.1", str(primary.port))))
            _poll(lambda: _info_field(self.replica, "replication", "master_link_status") == "up",
                  20, "the replica in sync")
            self.sentinel = start_on_free_port(lambda: SentinelServer(self.MASTER, primary.port))
            # The sentinel must have found the replica, or it has nothing to promote.
            _poll(self._sentinel_sees_replica, 20, "the sentinel seeing the replica")
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def sentinels(self) -> tuple[str, ...]:
        assert self.sentinel is not None
        return (f"127.0.0.1:{self.sentinel.port}",)

    def _sentinel_sees_replica(self) -> bool:
        assert self.sentinel is not None
        try:
            with redis.Redis(port=self.sentinel.port, socket_timeout=1) as client:
                return bool(client.sentinel_slaves(self.MASTER))
        except redis.RedisError:
            return False

    def master_port(self) -> int:
        assert self.sentinel is not None
        with redis.Redis(port=self.sentinel.port, socket_timeout=1) as client:
            return int(client.sentinel_get_master_addr_by_name(self.MASTER)[1])

    def stop(self) -> None:
        for server in (self.sentinel, self.replica, self.primary):
            if server is not None:
                server.cleanup()
