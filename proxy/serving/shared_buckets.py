"""Token buckets in memory shared by forked processes: one table for all of a proxy's workers.

A fixed number of slots in a shared memory file, made before the workers are forked, so that
every worker reads and writes the same buckets: a client's budget is one budget whichever
worker its connections reach. The lock is a POSIX record lock on that file (fcntl(2) F_SETLKW),
which the kernel releases when its holder dies, so a worker killed inside the few microseconds
it holds the lock cannot stall the others; a thread lock orders the threads of one process,
which share their process's record lock.
"""

import contextlib
import fcntl
import hashlib
import mmap
import os
import struct
import tempfile
import threading

# One slot: the key's fingerprint (0: never used), the tokens left, and when it was touched.
SLOT = struct.Struct("=Qdd")
# Slots looked at for one key, from the one its hash names: it lives in one of them, and when
# none is free the least recently touched of them is evicted.
PROBE = 8


def _shared_file(size: int) -> int:
    """A file descriptor of `size` zero bytes, in memory where the system allows (memfd)."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("redis-proxy-buckets", os.MFD_CLOEXEC)
    else:
        with tempfile.TemporaryFile() as anonymous:  # unlinked at once; the descriptor lives on
            fd = os.dup(anonymous.fileno())
    os.ftruncate(fd, size)
    return fd


class SharedBuckets:
    """Token buckets of `rate` tokens a second up to `burst`, at most `slots` clients.

    A bucket left alone for burst/rate seconds is full again, the same as a new one, so its
    slot is free for another client. `now` comes from the caller, from a clock all the
    processes share (time.monotonic is the system's, not the process's).
    """

    def __init__(self, slots: int, rate: float, burst: float):
        if slots < 1:
            raise ValueError("slots must be at least 1")
        self.slots, self.rate, self.burst = slots, rate, burst
        self.idle = burst / rate
        self._fd = _shared_file(slots * SLOT.size)
        self._memory = mmap.mmap(self._fd, slots * SLOT.size, mmap.MAP_SHARED)
        self._threads = threading.Lock()
        # Keyed: nobody outside can choose addresses whose slots collide.
        self._salt = os.urandom(16)

    def _fingerprint(self, key: str) -> int:
        digest = hashlib.blake2b(key.encode(), digest_size=8, key=self._salt).digest()
        return int.from_bytes(digest, "little") or 1

    def take(self, key: str, now: float, take: bool = True) -> float:
        """The tokens `key`'s bucket holds at `now`; when it holds one and `take`, one is taken
        (`take=False`: only look, nothing is written)."""
        fingerprint = self._fingerprint(key)
        start = fingerprint % self.slots
        memory = self._memory
        # A look writes nothing, so it takes no lock (a lock is two system calls, and every
        # request that needs a token looks): a slot written at that instant may read torn,
        # misjudging that one request, as a look a moment earlier or later could anyway.
        with self._threads if take else contextlib.nullcontext():
            if take:
                fcntl.lockf(self._fd, fcntl.LOCK_EX)
            try:
                found = victim = None
                oldest = float("inf")
                for i in range(min(PROBE, self.slots)):
                    offset = (start + i) % self.slots * SLOT.size
                    used, tokens_, touched_ = SLOT.unpack_from(memory, offset)
                    tokens, touched = float(tokens_), float(touched_)
                    if used == fingerprint:
                        found = offset
                        break
                    if not used or now - touched >= self.idle:
                        touched = -float("inf")  # free, or as good as new: taken first
                    if touched < oldest:
                        victim, oldest = offset, touched
                if found is None:
                    assert victim is not None  # PROBE >= 1 slot was looked at
                    found, tokens, touched = victim, float(self.burst), now
                tokens = min(self.burst, tokens + max(0.0, now - touched) * self.rate)
                if take:
                    # Written even when refused: touching it keeps it from being evicted.
                    SLOT.pack_into(memory, found, fingerprint,
                                   tokens - 1.0 if tokens >= 1.0 else tokens, now)
            finally:
                if take:
                    fcntl.lockf(self._fd, fcntl.LOCK_UN)
        return tokens

    def live(self, now: float) -> int:
        """How many clients have a bucket that is not full again (a scan: for tests)."""
        with self._threads:
            count = 0
            for offset in range(0, self.slots * SLOT.size, SLOT.size):
                used, _tokens, touched = SLOT.unpack_from(self._memory, offset)
                count += bool(used) and now - touched < self.idle
            return count
