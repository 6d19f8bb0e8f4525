"""HTTP_WORKERS > 1: each worker hands its own figures to its peers over a unix socket in a
folder the parent made before forking, so whichever worker a scrape reaches answers for all.

A scrape asks every other worker's socket for a snapshot (JSON: its metric families, its
history and last errors) and merges them with its own (`merge_families`): counters and
histograms are summed, `_created` takes the earliest, and the families in MIN_FAMILIES the
lowest (Redis is up only if every worker reaches it). Nothing is written on the request path.
"""

import json
import logging
import os
import socket
import socketserver
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client.core import Metric

log = logging.getLogger(__name__)

PEER_TIMEOUT = 1.0  # a worker too busy to answer within this is left out of the scrape
MAX_SNAPSHOT = 16 * 1024 * 1024
SOCKET_SUFFIX = ".sock"
MIN_FAMILIES = frozenset({"redis_proxy_redis_up"})

Snapshot = dict[str, Any]


def families_to_json(families: Iterable[Metric]) -> list[dict[str, Any]]:
    return [{"name": family.name, "type": family.type, "documentation": family.documentation,
             "samples": [[s.name, s.labels, s.value] for s in family.samples]}
            for family in families]


def merge_families(snapshots: list[list[dict[str, Any]]]) -> list[Metric]:
    """One family list from several workers' (families_to_json form), samples combined."""
    merged: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for families in snapshots:
        for doc in families:
            name = doc["name"]
            if name not in merged:
                merged[name] = Metric(name, doc["documentation"], doc["type"])
                values[name] = {}
            combine = min if name in MIN_FAMILIES else None
            for sample_name, labels, value in doc["samples"]:
                key = (sample_name, tuple(sorted(labels.items())))
                seen = values[name].get(key)
                if seen is None:
                    values[name][key] = value
                elif combine is min or sample_name.endswith("_created"):
                    values[name][key] = min(seen, value)
                else:
                    values[name][key] = seen + value
    for name, family in merged.items():
        for (sample_name, labels), value in values[name].items():
            family.add_sample(sample_name, dict(labels), value)
    return list(merged.values())


class _SnapshotHandler(socketserver.BaseRequestHandler):
    server: "PeerServer"

    def handle(self) -> None:
        self.request.settimeout(PEER_TIMEOUT)
        self.request.sendall(json.dumps(self.server.snapshot()).encode())


class PeerServer(socketserver.ThreadingUnixStreamServer):
    """This worker's socket: each connection gets one snapshot, then is closed."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, path: str, snapshot: Callable[[], Snapshot]):
        self.snapshot = snapshot
        if os.path.exists(path):
            os.unlink(path)  # a previous worker with this pid, long gone
        super().__init__(path, _SnapshotHandler)

    def drain(self) -> None:
        """Nothing to drain (a connection is one snapshot): the other workers may still read
        this one's figures while its front ends drain."""

    def drained(self, timeout: float) -> bool:
        return True

    def server_close(self) -> None:
        super().server_close()
        try:
            os.unlink(self.server_address)  # type: ignore[arg-type]
        except OSError:
            pass


class WorkerPeers:
    """The folder of the workers' sockets: this worker's own, and a way to ask the others."""

    def __init__(self, folder: str, pid: int | None = None):
        self.folder = folder
        self.path = os.path.join(folder, f"{pid or os.getpid()}{SOCKET_SUFFIX}")

    def serve(self, snapshot: Callable[[], Snapshot]) -> PeerServer:
        """This worker's socket, bound (unstarted: run its serve_forever in a thread)."""
        return PeerServer(self.path, snapshot)

    def gather(self) -> list[Snapshot]:
        """The other workers' snapshots; a worker that is gone or does not answer in time is
        left out (its socket file is removed when nothing listens on it any more)."""
        try:
            names = sorted(os.listdir(self.folder))
        except OSError:
            return []
        found = []
        for name in names:
            path = os.path.join(self.folder, name)
            if not name.endswith(SOCKET_SUFFIX) or path == self.path:
                continue
            try:
                found.append(_ask(path))
            except (ConnectionRefusedError, FileNotFoundError):
                try:
                    os.unlink(path)  # its worker died without closing it
                except OSError:
                    pass
            except (OSError, ValueError) as exc:
                log.debug("worker metrics at %s not read: %s", path, exc)
        return found


def _ask(path: str) -> Snapshot:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(PEER_TIMEOUT)
        sock.connect(path)
        chunks, size = [], 0
        while chunk := sock.recv(65536):
            size += len(chunk)
            if size > MAX_SNAPSHOT:
                raise ValueError("snapshot too large")
            chunks.append(chunk)
    snapshot = json.loads(b"".join(chunks))
    if not isinstance(snapshot, dict):
        raise ValueError("not a snapshot")
    return snapshot
