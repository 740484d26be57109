"""Same-host weight broadcast through sealed shared memory: one copy per host, read straight into arrays.

Over gRPC the server serializes every byte once per client, so N actors on its host cost it N streams
(bench/weights.py). Instead, once per version, `SharedSnapshots` writes the snapshot's payload (the
chunks' data end to end, as `codec` lays them out) into a memfd, seals it against writes and resizing,
checks the sealed bytes against the chunk digests (on `codec.HASH_THREADS` threads), and hands out its
`/proc/<pid>/fd/<n>` path with the header over the authenticated `ShareWeights` call, to loopback peers
only. `read_shared` opens that path, checks it is the same sealed file (inode, device, size, seals),
maps it read-only and copies each tensor once into a new array: no per-client hashing, no framing, no
server thread per byte. (Reading into `mx.zeros` instead wrote every page twice: with 8 actors on 2
cores a version took 1.58x the time it took 1 actor; with one copy and the server's check on two
threads, 1.32-1.53x: bench/weights.py.) The seals keep the mapping's size, so a reader cannot fault
past its end.

The kernel lets only processes of the server's user open the path. Nothing needs cleaning up: the
memory is freed when the server has moved on to a newer version and the last reader has closed it,
and with the server process at the latest. Linux only; elsewhere, or on any failure, clients stream.
"""

from __future__ import annotations

import fcntl
import math
import mmap
import os
import threading
from collections.abc import Callable
from concurrent import futures

import mlx.core as mx
import numpy as np

from lazarus.distributed import codec
from lazarus.distributed import parameter_server_pb2 as pb
from lazarus.errors import LazarusError

SEALS = ("F_SEAL_WRITE", "F_SEAL_SHRINK", "F_SEAL_GROW", "F_SEAL_SEAL")
SUPPORTED = (hasattr(os, "memfd_create") and all(hasattr(fcntl, seal) for seal in SEALS)
             and os.path.isdir("/proc/self/fd"))


class SharedSnapshotError(LazarusError, ValueError):
    """A shared snapshot that cannot be used (gone, replaced, unsealed or the wrong size); names the path."""


def _seals() -> int:
    return sum(getattr(fcntl, seal) for seal in SEALS)


class _Segment:
    """One sealed memfd holding one snapshot's payload."""

    def __init__(self, encoded: codec.EncodedSnapshot):
        header = encoded.header
        fd = os.memfd_create(f"lazarus-v{header.version}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, header.total_bytes)
            offset = 0
            for part in encoded.parts[1:]:
                data = codec.read_chunk(part).data
                while data:
                    written = os.pwrite(fd, data, offset)
                    data, offset = data[written:], offset + written
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _seals())
            _check_digests(fd, encoded)  # what is sealed is what the digests say, for every reader
        except BaseException:
            os.close(fd)
            raise
        stat = os.fstat(fd)
        self.fd, self.header = fd, header
        self.answer = pb.SharedSnapshot(available=True, header=header, path=f"/proc/{os.getpid()}/fd/{fd}",
                                        inode=stat.st_ino, device=stat.st_dev)

    def close(self) -> None:
        os.close(self.fd)  # readers that opened it keep their own reference


def _check_digests(fd: int, encoded: codec.EncodedSnapshot) -> None:
    """Hash the sealed bytes chunk by chunk (on `codec.HASH_THREADS` threads) against the chunks' sha256s."""
    header = encoded.header
    if not header.total_bytes:
        return
    mapped = mmap.mmap(fd, header.total_bytes, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
    try:
        with memoryview(mapped) as whole, futures.ThreadPoolExecutor(codec.HASH_THREADS) as pool:
            starts = range(0, header.total_bytes, header.chunk_bytes)
            digests = pool.map(lambda start: codec.sha256_digest(whole[start:start + header.chunk_bytes]), starts)
            for index, (digest, part) in enumerate(zip(digests, encoded.parts[1:])):
                if digest != codec.read_chunk(part).sha256:
                    raise SharedSnapshotError(f"shared memory for version {header.version}: chunk {index} does "
                                              f"not match its sha256")
    finally:
        mapped.close()


class SharedSnapshots:
    """The server's side: the sealed memfd of the current snapshot of each scope, built on first request."""

    def __init__(self, snapshot: Callable[[int], codec.EncodedSnapshot]):
        """`snapshot(scope)` returns the current encoded snapshot (`ParameterStore.snapshot`)."""
        self._snapshot = snapshot
        self._segments: dict[int, _Segment] = {}
        self._lock = threading.Lock()
        self._closed = False

    def share(self, scope: int) -> pb.SharedSnapshot:
        if not SUPPORTED:
            return pb.SharedSnapshot(available=False, reason="no sealed shared memory on this platform")
        encoded = self._snapshot(scope)
        with self._lock:  # one build per version and scope; later callers get the same segment
            if self._closed:
                return pb.SharedSnapshot(available=False, reason="server is stopping")
            segment = self._segments.get(scope)
            key = (encoded.header.version, encoded.header.sha256)  # a new version, even of equal bytes, is new
            if segment is None or (segment.header.version, segment.header.sha256) != key:
                if segment is not None:
                    segment.close()
                self._segments[scope] = segment = _Segment(encoded)
            return segment.answer

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for segment in self._segments.values():
                segment.close()
            self._segments = {}


def read_shared(answer: pb.SharedSnapshot,
                on_header: Callable[[pb.SnapshotHeader], None] | None = None) -> dict[str, mx.array]:
    """The tensors of a `ShareWeights` answer, read from the server's sealed memfd into new arrays."""
    header, path = answer.header, answer.path
    codec.check_header(header)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise SharedSnapshotError(f"shared snapshot {path}: {e.strerror}") from None
    try:
        stat = os.fstat(fd)
        if (stat.st_ino, stat.st_dev) != (answer.inode, answer.device):
            raise SharedSnapshotError(f"shared snapshot {path} was replaced (the server moved to a newer version)")
        if stat.st_size != header.total_bytes:
            raise SharedSnapshotError(f"shared snapshot {path} holds {stat.st_size} bytes, its header says "
                                      f"{header.total_bytes}")
        if fcntl.fcntl(fd, fcntl.F_GET_SEALS) & _seals() != _seals():
            raise SharedSnapshotError(f"shared snapshot {path} is not sealed against writes")
        if on_header is not None:
            on_header(header)
        return _copy_out(fd, header)
    finally:
        os.close(fd)


def _copy_out(fd: int, header: pb.SnapshotHeader) -> dict[str, mx.array]:
    """Each tensor copied once from a read-only mapping of the memfd into a new array."""
    if not header.total_bytes:
        return {spec.name: codec.destination_array(spec)[0] for spec in header.tensors}
    mapped = mmap.mmap(fd, header.total_bytes, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0),
                       prot=mmap.PROT_READ)
    try:
        tensors = {}
        for spec in header.tensors:
            mx_dtype, np_dtype = codec.DTYPES[spec.dtype]
            view = np.frombuffer(mapped, dtype=np_dtype, count=math.prod(spec.shape), offset=spec.offset)
            value = mx.array(view.reshape(tuple(spec.shape)))  # copies now: nothing refers to the mapping after
            del view
            tensors[spec.name] = value.view(mx.bfloat16) if mx_dtype == mx.bfloat16 else value
        mx.eval(list(tensors.values()))  # MLX streams are per thread: hand out no lazy graphs
        return tensors
    finally:
        mapped.close()

