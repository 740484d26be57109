"""Same-host weight broadcast through sealed shared memory: one copy per host, read straight into arrays.

Over gRPC the server serializes every byte once per client, so N actors on its host cost it N streams
(bench/weights.py). Instead, once per version, `SharedSnapshots` writes the version's tensors into a
memfd straight from their arrays, laid out as `codec` lays out a payload, seals it against writes and
resizing, and hashes the sealed bytes chunk by chunk (on `codec.HASH_THREADS` threads) for the header:
the digests are of what every reader maps, and equal to those a stream of the version carries (the same
bytes in the same chunks), so no chunk messages are built for it. It hands out the memfd's
`/proc/<pid>/fd/<n>` path with the header over the authenticated `ShareWeights` call, to loopback peers
only. `read_shared` opens that path, checks it is the same sealed file (inode, device, size, seals),
maps it read-only and copies each tensor once into a new array: no per-client hashing, no framing, no
server thread per byte. The seals keep the mapping's size, so a reader cannot fault past its end.
(Reading into `mx.zeros` instead wrote every page twice: with 8 actors on 2 cores a version took 1.58x
the time it took 1 actor. Building the segment from the stream's encoded chunks, then checking it
against their digests, cost the server ~190 ms per 100 MB version against ~100 ms now, and copying
the chunks into fresh memory took 10-260 ms depending on what the kernel had at hand: bench/weights.py,
docs/parameter-server.md.)

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
    """One sealed memfd holding one version's payload, and the header whose digests are of its sealed bytes."""

    def __init__(self, version: int, scope: int, tensors: dict[str, mx.array], trainable: list[str]):
        specs = codec.tensor_specs(tensors, trainable)
        total = sum(spec.nbytes for spec in specs)
        fd = os.memfd_create(f"lazarus-v{version}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, total)
            for spec, value in zip(specs, tensors.values()):
                data, offset = codec.tensor_bytes(value), spec.offset
                while data:
                    written = os.pwrite(fd, data, offset)
                    data, offset = data[written:], offset + written
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _seals())
            header = codec.snapshot_header(specs, version, scope, codec.CHUNK_BYTES,
                                           _chunk_digests(fd, total, codec.CHUNK_BYTES))
        except BaseException:
            os.close(fd)
            raise
        stat = os.fstat(fd)
        self.fd, self.header = fd, header
        self.answer = pb.SharedSnapshot(available=True, header=header, path=f"/proc/{os.getpid()}/fd/{fd}",
                                        inode=stat.st_ino, device=stat.st_dev)

    def close(self) -> None:
        os.close(self.fd)  # readers that opened it keep their own reference


def _chunk_digests(fd: int, total: int, chunk_bytes: int) -> list[bytes]:
    """The sha256 of each chunk of the sealed bytes, hashed on `codec.HASH_THREADS` threads."""
    if not total:
        return []
    mapped = mmap.mmap(fd, total, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
    try:
        with memoryview(mapped) as whole, futures.ThreadPoolExecutor(codec.HASH_THREADS) as pool:
            return list(pool.map(lambda start: codec.sha256_digest(whole[start:start + chunk_bytes]),
                                 range(0, total, chunk_bytes)))
    finally:
        mapped.close()


class SharedSnapshots:
    """The server's side: the sealed memfd of the current version of each scope, built on first request."""

    def __init__(self, current: Callable[[int], tuple[int, dict[str, mx.array], list[str]]]):
        """`current(scope)` returns the version, its tensors in that scope and the trainable names
        (`ParameterStore.current`)."""
        self._current = current
        self._segments: dict[int, _Segment] = {}
        self._lock = threading.Lock()
        self._closed = False

    def share(self, scope: int) -> pb.SharedSnapshot:
        if not SUPPORTED:
            return pb.SharedSnapshot(available=False, reason="no sealed shared memory on this platform")
        with self._lock:  # one build per version and scope; later callers get the same segment
            if self._closed:
                return pb.SharedSnapshot(available=False, reason="server is stopping")
            version, tensors, trainable = self._current(scope)
            segment = self._segments.get(scope)
            if segment is None or segment.header.version != version:  # versions only ever go up
                if segment is not None:
                    segment.close()
                self._segments[scope] = segment = _Segment(version, scope, tensors, trainable)
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
    # no MAP_POPULATE: the kernel's fault-around maps 16 pages per fault as the copy reads, which costs less
    # than populating every page table entry first (24-26 ms against 28-29 per 100 MB here)
    mapped = mmap.mmap(fd, header.total_bytes, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
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

