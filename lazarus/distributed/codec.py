"""Tensors <-> snapshot streams: a header with tensor specs and a sha256, then chunks under 4 MiB.

The payload is every tensor's raw little-endian bytes end to end (safetensors layout; bf16 as its raw
2-byte words; quantized weights are their packed uint32 words plus scales and biases). Each chunk
carries the sha256 of its data; the snapshot's sha256 is the sha256 of those digests in order (a hash
list), so a single hashing pass both names the tensors of a damaged chunk and identifies the snapshot.
`encode` builds the serialized messages once, chunk by chunk, so the serialized snapshot is the only
full copy it holds; `SnapshotDecoder` checks every chunk (index, offset, length, sha256) as it arrives
and names the tensors a bad or missing chunk covers.
"""

from __future__ import annotations

from lazarus.errors import LazarusError
import collections
import ctypes
import hashlib
import math
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from concurrent import futures
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from lazarus.distributed import parameter_server_pb2 as pb

#: Bytes of tensor data per chunk: 64 KiB under 4 MiB leaves room for the message framing.
CHUNK_BYTES = 4 * 1024 * 1024 - 64 * 1024
#: gRPC's default message limit; every serialized chunk message stays under it.
MESSAGE_LIMIT = 4 * 1024 * 1024
#: Threads hashing chunks as they arrive: sha256 (~1 GB/s a core here) is the costliest work of a pull, and
#: through the transfer socket the bytes arrive faster than one thread hashes them (bench/weights.py).
HASH_THREADS = 2

#: mlx dtype name -> (mlx dtype, numpy dtype of the same bytes). bf16 has no numpy dtype: its raw words.
DTYPES: dict[str, tuple[mx.Dtype, np.dtype]] = {
    "bool": (mx.bool_, np.dtype(np.bool_)),
    "uint8": (mx.uint8, np.dtype("<u1")),
    "uint16": (mx.uint16, np.dtype("<u2")),
    "uint32": (mx.uint32, np.dtype("<u4")),
    "uint64": (mx.uint64, np.dtype("<u8")),
    "int8": (mx.int8, np.dtype("<i1")),
    "int16": (mx.int16, np.dtype("<i2")),
    "int32": (mx.int32, np.dtype("<i4")),
    "int64": (mx.int64, np.dtype("<i8")),
    "float16": (mx.float16, np.dtype("<f2")),
    "bfloat16": (mx.bfloat16, np.dtype("<u2")),
    "float32": (mx.float32, np.dtype("<f4")),
    "float64": (mx.float64, np.dtype("<f8")),
    "complex64": (mx.complex64, np.dtype("<c8")),
}
_NAMES = {mx_dtype: name for name, (mx_dtype, _) in DTYPES.items()}


class CodecError(LazarusError, ValueError):
    """A snapshot stream that does not decode; the message names the chunk and the tensors it covers."""


@dataclass
class EncodedSnapshot:
    """One serialized snapshot: `parts[0]` is the header message, then one message per chunk."""

    header: pb.SnapshotHeader
    parts: list[bytes]

    @property
    def version(self) -> int:
        return self.header.version

    @property
    def nbytes(self) -> int:
        return sum(len(p) for p in self.parts)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters
_malloc_tuned = False


def keep_message_buffers(mmap_threshold: int = 16 * 1024 * 1024, trim_threshold: int = 64 * 1024 * 1024) -> bool:
    """Let this process reuse freed message-sized buffers instead of handing them back to the kernel.

    glibc adapts its thresholds to the largest block freed so far, and with 4 MiB messages it ends up
    trimming the heap after almost every message, so each gRPC receive buffer and each received
    `bytes` is fresh memory that costs a page fault per 4 KiB: about a third of a client's receive
    CPU (bench/weights.py). Fixed thresholds (blocks under `mmap_threshold` come from the heap, up to
    `trim_threshold` bytes of free heap are kept) stop that; larger blocks, such as big tensors, are
    still mapped and unmapped on their own. Process-wide, applied once, Linux glibc only, and left
    alone when the environment already sets glibc's malloc tunables. Returns whether it applied them.
    """
    global _malloc_tuned
    if _malloc_tuned:
        return True
    user_set = any(k.startswith("MALLOC_") for k in os.environ) or "malloc" in os.environ.get("GLIBC_TUNABLES", "")
    glibc = sys.platform == "linux" and hasattr(os, "confstr") and "glibc" in (os.confstr("CS_GNU_LIBC_VERSION") or "")
    if user_set or not glibc:
        return False
    mallopt = ctypes.CDLL(None).mallopt
    _malloc_tuned = bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(
        mallopt(_M_TRIM_THRESHOLD, trim_threshold)
    )
    return _malloc_tuned


def keep_snapshot_buffers(nbytes: int) -> int:
    """Let MLX keep up to `nbytes` of freed buffers for reuse; returns the cache limit now in force.

    MLX frees arrays into a cache capped at 32 MiB on the CPU by default, so each pulled snapshot would
    otherwise land in fresh memory and pay a page fault per 4 KiB, which costs as much as receiving the
    bytes. With the cap at one snapshot, the arrays of the version a client drops serve the next one.
    Process-wide; it only ever raises the cap.
    """
    previous = mx.set_cache_limit(nbytes)
    if previous > nbytes:
        mx.set_cache_limit(previous)
    return max(previous, nbytes)


def dtype_name(dtype: mx.Dtype) -> str:
    try:
        return _NAMES[dtype]
    except KeyError:
        raise CodecError(f"dtype {dtype} cannot travel in a snapshot") from None


def tensor_specs(tensors: Mapping[str, mx.array], trainable: Iterable[str] = ()) -> list[pb.TensorSpec]:
    """Specs with payload offsets, in the order of `tensors`."""
    trainable = set(trainable)
    specs, offset = [], 0
    for name, value in tensors.items():
        nbytes = value.size * value.itemsize
        specs.append(pb.TensorSpec(name=name, dtype=dtype_name(value.dtype), shape=list(value.shape),
                                   offset=offset, nbytes=nbytes, trainable=name in trainable))
        offset += nbytes
    return specs


def tensor_bytes(value: mx.array) -> memoryview:
    """The bytes of an evaluated tensor, as laid out in a payload (a view where MLX's layout allows)."""
    if value.dtype == mx.bfloat16:
        value = value.view(mx.uint16)
    return memoryview(np.ascontiguousarray(np.array(value, copy=False)).reshape(-1)).cast("B")


def encode(tensors: Mapping[str, mx.array], version: int, scope: int = pb.SCOPE_FULL,
           trainable: Iterable[str] = (), chunk_bytes: int = CHUNK_BYTES,
           worker_id: str = "", push_id: str = "") -> EncodedSnapshot:
    """Serialize `tensors` into header + chunk messages, filling one chunk buffer at a time."""
    if not 0 < chunk_bytes <= CHUNK_BYTES:
        raise ValueError(f"chunk_bytes must be in 1..{CHUNK_BYTES}, got {chunk_bytes}")
    specs = tensor_specs(tensors, trainable)
    total = sum(s.nbytes for s in specs)
    chunk_digests: list[bytes] = []  # the header's sha256 is over these
    parts: list[bytes] = [b""]  # the header goes first once the digest is known
    buffer, filled = bytearray(min(chunk_bytes, total)), 0

    def add_chunk(data: memoryview) -> None:
        chunk_digest = hashlib.sha256(data).digest()
        chunk_digests.append(chunk_digest)
        index = len(parts) - 1
        parts.append(chunk_message(index, index * chunk_bytes, data, chunk_digest))

    mx.eval(list(tensors.values()))
    for value in tensors.values():
        raw = tensor_bytes(value)
        pos = 0
        while pos < len(raw):
            n = min(len(raw) - pos, chunk_bytes - filled)
            if n == chunk_bytes:  # a whole chunk inside one tensor: frame it straight from the tensor
                add_chunk(raw[pos:pos + n])
            else:  # chunks that straddle tensors are assembled in the buffer
                buffer[filled:filled + n] = raw[pos:pos + n]
                filled += n
                if filled == chunk_bytes:
                    add_chunk(memoryview(buffer))
                    filled = 0
            pos += n
    if filled:
        add_chunk(memoryview(buffer)[:filled])
    header = snapshot_header(specs, version, scope, chunk_bytes, chunk_digests, worker_id, push_id)
    parts[0] = pb.SnapshotPart(header=header).SerializeToString()
    return EncodedSnapshot(header, parts)


def snapshot_header(specs: list[pb.TensorSpec], version: int, scope: int, chunk_bytes: int,
                    chunk_digests: Iterable[bytes], worker_id: str = "", push_id: str = "") -> pb.SnapshotHeader:
    """The header of a payload laid out as `specs` say, in chunks of `chunk_bytes` with these sha256s."""
    chunk_digests = list(chunk_digests)
    return pb.SnapshotHeader(version=version, scope=scope, tensors=specs,
                             total_bytes=sum(s.nbytes for s in specs), chunk_bytes=chunk_bytes,
                             num_chunks=len(chunk_digests), sha256=sha256_digest(*chunk_digests),
                             worker_id=worker_id, push_id=push_id)


# -- chunk messages without protobuf copies -------------------------------------------------------------
# A chunk message is `SnapshotPart{chunk: Chunk{index, offset, sha256, data}}` in protobuf's wire format.
# Going through the generated classes copies the data twice each way (4 MB per message); these frame and
# read it directly. Anything `read_chunk` does not recognise is left to protobuf (tests check they agree).

_CHUNK_TAG = 0x12  # SnapshotPart.chunk: field 2, length-delimited
_DATA_TAG = 0x1A  # Chunk.data: field 3, length-delimited


@dataclass
class RawChunk:
    index: int
    offset: int
    data: memoryview
    sha256: bytes


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = 0
    for shift in range(0, 70, 7):
        if pos >= len(buf):
            raise CodecError("chunk message ends inside a varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value & 0xFFFFFFFFFFFFFFFF, pos
    raise CodecError("chunk message has a varint longer than 10 bytes")


def chunk_message(index: int, offset: int, data: bytes | memoryview, sha256: bytes) -> bytes:
    """The serialized `SnapshotPart` holding this chunk, with one copy of `data`."""
    head = pb.Chunk(index=index, offset=offset, sha256=sha256).SerializeToString()
    head += bytes([_DATA_TAG]) + _varint(len(data))
    return b"".join((bytes([_CHUNK_TAG]), _varint(len(head) + len(data)), head, data))


def read_chunk(message: bytes) -> RawChunk | None:
    """The chunk in a serialized `SnapshotPart`, its data a view into `message`; None if it is no plain chunk."""
    buf = memoryview(message)
    if not len(buf) or buf[0] != _CHUNK_TAG:
        return None
    length, pos = _read_varint(buf, 1)
    if pos + length != len(buf):
        return None
    index, offset, data, digest = 0, 0, buf[0:0], b""
    while pos < len(buf):
        tag, pos = _read_varint(buf, pos)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
            if field == 1:
                index = value & 0xFFFFFFFF
            elif field == 2:
                offset = value
        elif wire == 2:
            size, pos = _read_varint(buf, pos)
            if pos + size > len(buf):
                raise CodecError("chunk message ends inside a field")
            if field == 3:
                data = buf[pos:pos + size]
            elif field == 4:
                digest = bytes(buf[pos:pos + size])
            pos += size
        else:
            return None
    return RawChunk(index, offset, data, digest)


def unchanged_header(version: int, scope: int) -> bytes:
    """The whole answer to a pull from a caller that already has `version`."""
    return pb.SnapshotPart(header=pb.SnapshotHeader(version=version, scope=scope, unchanged=True)).SerializeToString()


def check_header(header: pb.SnapshotHeader, max_bytes: int | None = None) -> None:
    """Reject a header whose specs are inconsistent before any memory is reserved for it."""
    if header.unchanged:
        return
    seen, offset = set(), 0
    for spec in header.tensors:
        if not spec.name or spec.name in seen:
            raise CodecError(f"tensor name {spec.name!r} is empty or repeated in the snapshot header")
        seen.add(spec.name)
        if spec.dtype not in DTYPES:
            raise CodecError(f"tensor {spec.name}: unknown dtype {spec.dtype!r}")
        if any(d < 0 for d in spec.shape):
            raise CodecError(f"tensor {spec.name}: negative dimension in shape {list(spec.shape)}")
        expected = math.prod(spec.shape) * DTYPES[spec.dtype][1].itemsize
        if spec.nbytes != expected or spec.offset != offset:
            raise CodecError(f"tensor {spec.name}: offset {spec.offset} / {spec.nbytes} bytes do not match "
                             f"shape {list(spec.shape)} of {spec.dtype} at offset {offset}")
        offset += spec.nbytes
    if header.total_bytes != offset:
        raise CodecError(f"snapshot header says {header.total_bytes} bytes, its tensors add up to {offset}")
    if max_bytes is not None and offset > max_bytes:
        raise CodecError(f"snapshot of {offset} bytes is larger than the {max_bytes} bytes allowed")
    if not 0 < header.chunk_bytes <= CHUNK_BYTES and offset:
        raise CodecError(f"snapshot chunk_bytes {header.chunk_bytes} is not in 1..{CHUNK_BYTES}")
    if header.num_chunks != (math.ceil(offset / header.chunk_bytes) if offset else 0):
        raise CodecError(f"snapshot header says {header.num_chunks} chunks for {offset} bytes "
                         f"of {header.chunk_bytes}-byte chunks")
    if len(header.sha256) != 32:
        raise CodecError("snapshot header has no sha256")


class SnapshotDecoder:
    """Reassemble one snapshot from its messages: `feed` each part in order, then `finish`.

    Chunk bytes are copied straight into the destination MLX arrays, so decoding holds one copy of the
    tensors. Helper threads keep that copy the only work on the receiving thread: one allocates the
    destination arrays in payload order, up to `ALLOCATE_AHEAD` bytes past the data received so far (a
    fresh MLX buffer costs a page fault per 4 KiB, as much as receiving the bytes; nothing is allocated
    before the first chunk arrives), the others (`HASH_THREADS`) compute each chunk's sha256 (hashlib and
    MLX release the GIL). A sha256 mismatch surfaces at a later `feed` (at most
    `HASHES_IN_FLIGHT` chunks later) or at `finish`, naming the chunk's tensors.
    """

    #: Chunks whose sha256 may still be running; bounds the received bytes held only for hashing.
    HASHES_IN_FLIGHT = 4
    #: How far past the received data destination arrays are allocated ahead of the chunks filling them.
    ALLOCATE_AHEAD = 64 * 1024 * 1024

    def __init__(self, max_bytes: int | None = None,
                 accept_header: Callable[[pb.SnapshotHeader], None] | None = None):
        """`max_bytes` caps the payload; `accept_header` may raise to refuse a header before allocation."""
        self.max_bytes = max_bytes
        self.accept_header = accept_header
        self.header: pb.SnapshotHeader | None = None
        self._tensors: dict[str, mx.array] = {}
        self._specs: list[pb.TensorSpec] = []  # the non-empty tensors, in payload order
        self._buffers: list[futures.Future] = []  # (array, writable bytes) of the first tensors, allocating
        self._tensor = 0  # first tensor the next chunk can touch
        self._view: memoryview | None = None  # its writable bytes, once allocated
        self._next = 0
        self._digests = hashlib.sha256()
        self._hashing: collections.deque[tuple[int, bytes, futures.Future]] = collections.deque()
        self._hasher: futures.ThreadPoolExecutor | None = None
        self._allocator: futures.ThreadPoolExecutor | None = None

    def feed(self, part: bytes | pb.SnapshotPart) -> None:
        """Take the next message, serialized (as received) or parsed."""
        if isinstance(part, (bytes, bytearray, memoryview)):
            chunk = read_chunk(part) if self.header is not None and not self.header.unchanged else None
            if chunk is not None:
                self._take(chunk)
                return
            part = parse_part(part)
        kind = part.WhichOneof("part")
        if self.header is None:
            if kind != "header":
                raise CodecError("snapshot stream does not start with a header")
            check_header(part.header, self.max_bytes)
            if self.accept_header is not None:
                self.accept_header(part.header)
            self.header = part.header
            if not self.header.unchanged:
                self._allocate()
            return
        if kind != "chunk":
            raise CodecError("snapshot stream has a second header or an empty part")
        if self.header.unchanged:
            raise CodecError("snapshot stream marked unchanged carries chunks")
        self._take(part.chunk)

    def _allocate(self) -> None:
        self._specs = [spec for spec in self.header.tensors if spec.nbytes]
        self._hasher = futures.ThreadPoolExecutor(HASH_THREADS, thread_name_prefix="lazarus-sha256")
        self._allocator = futures.ThreadPoolExecutor(1, thread_name_prefix="lazarus-alloc")

    def _take(self, chunk: pb.Chunk | RawChunk) -> None:
        header = self.header
        if chunk.index < self._next:
            raise CodecError(f"chunk {chunk.index} arrived twice, covering {self.tensors_in(chunk.index)}")
        if chunk.index > self._next:
            stop = min(chunk.index, header.num_chunks)
            raise CodecError(f"missing chunk(s) {self._next}..{stop - 1} covering {self.tensors_in(self._next, stop)}")
        if chunk.index >= header.num_chunks:
            raise CodecError(f"chunk {chunk.index} is past the {header.num_chunks} chunks of the snapshot")
        start = chunk.index * header.chunk_bytes
        length = min(header.chunk_bytes, header.total_bytes - start)
        data = chunk.data
        if chunk.offset != start or len(data) != length:
            raise CodecError(f"chunk {chunk.index} has offset {chunk.offset} and {len(data)} bytes, "
                             f"expected {start} and {length}, covering {self.tensors_in(chunk.index)}")
        self._check_hashes(wait=len(self._hashing) >= self.HASHES_IN_FLIGHT)
        self._hashing.append((chunk.index, chunk.sha256, self._hasher.submit(sha256_digest, data)))
        self._allocate_through(start + length + self.ALLOCATE_AHEAD)
        data, pos = memoryview(data), 0
        for piece in self._pieces(start, start + length):
            piece[:] = data[pos:pos + len(piece)]
            pos += len(piece)
        self._next += 1

    def receive_chunk(self, sha256: bytes, fill: Callable[[memoryview], None]) -> None:
        """The next chunk, written in place: `fill` gets the writable bytes of each tensor piece the chunk
        covers, in order, and must fill each whole (a socket's `recv_into` until full). The chunk is then
        hashed and checked against `sha256` as a fed chunk is: one copy, from the source into the arrays."""
        header = self.header
        if header is None or header.unchanged:
            raise CodecError("a snapshot chunk needs a header that announces chunks first")
        if self._next >= header.num_chunks:
            raise CodecError(f"chunk {self._next} is past the {header.num_chunks} chunks of the snapshot")
        start = self._next * header.chunk_bytes
        end = min(start + header.chunk_bytes, header.total_bytes)
        self._check_hashes(wait=len(self._hashing) >= self.HASHES_IN_FLIGHT)
        self._allocate_through(end + self.ALLOCATE_AHEAD)
        pieces = self._pieces(start, end)
        for piece in pieces:
            fill(piece)
        self._hashing.append((self._next, bytes(sha256), self._hasher.submit(sha256_digest, *pieces)))
        self._next += 1

    def _allocate_through(self, end: int) -> None:
        """Queue the allocation of every tensor that starts before payload byte `end`."""
        while len(self._buffers) < len(self._specs) and self._specs[len(self._buffers)].offset < end:
            self._buffers.append(self._allocator.submit(destination_array, self._specs[len(self._buffers)]))

    def _pieces(self, start: int, end: int) -> list[memoryview]:
        """The writable bytes of payload [start, end), one view per tensor it touches (they must be filled
        in order: a tensor's array is handed out once its last byte has been asked for)."""
        pieces = []
        while self._tensor < len(self._specs):
            spec = self._specs[self._tensor]
            if self._view is None:
                self._tensors[spec.name], self._view = self._buffers[self._tensor].result()
            lo, hi = max(start, spec.offset), min(end, spec.offset + spec.nbytes)
            if lo < hi:
                pieces.append(self._view[lo - spec.offset:hi - spec.offset])
            if spec.offset + spec.nbytes > end:
                break
            self._tensor, self._view = self._tensor + 1, None
        return pieces

    def _check_hashes(self, wait: bool) -> None:
        """Compare the sha256 of earlier chunks, in order: those done, and the oldest if `wait`."""
        while self._hashing and (wait or self._hashing[0][2].done()):
            index, expected, digest = self._hashing.popleft()
            digest = digest.result()
            if digest != expected:
                raise CodecError(f"corrupt chunk {index} (sha256 mismatch) covering {self.tensors_in(index)}")
            self._digests.update(digest)
            wait = False

    def tensors_in(self, first: int, stop: int | None = None) -> str:
        """Names of the tensors whose bytes lie in chunks first..stop-1."""
        stop = first + 1 if stop is None else stop
        lo, hi = first * self.header.chunk_bytes, stop * self.header.chunk_bytes
        names = [s.name for s in self.header.tensors if s.offset < hi and s.offset + s.nbytes > lo]
        return "tensor(s) " + ", ".join(names) if names else "no tensor"

    def finish(self) -> dict[str, mx.array]:
        """The decoded tensors (empty for an `unchanged` answer); raises on a short stream or bad sha256."""
        if self.header is None:
            raise CodecError("snapshot stream ended before its header")
        if self.header.unchanged:
            return {}
        while self._hashing:
            self._check_hashes(wait=True)
        self.close()
        if self._next != self.header.num_chunks:
            raise CodecError(f"snapshot stream ended after {self._next} of {self.header.num_chunks} chunks: "
                             f"missing {self.tensors_in(self._next, self.header.num_chunks)}")
        if self._digests.digest() != self.header.sha256:
            raise CodecError("snapshot sha256 does not match its chunks' digests")
        received, self._tensors, self._view, self._buffers = self._tensors, {}, None, []
        tensors = {}
        for spec in self.header.tensors:
            mx_dtype = DTYPES[spec.dtype][0]
            value = received.get(spec.name)
            if value is None:  # an empty tensor
                value = mx.zeros(tuple(spec.shape), dtype=mx_dtype)
            tensors[spec.name] = value.view(mx.bfloat16) if mx_dtype == mx.bfloat16 else value
        mx.eval(list(tensors.values()))  # MLX streams are per thread: hand out no lazy graphs
        return tensors

    def close(self) -> None:
        """Stop the helper threads (finish does this; call it when abandoning a stream)."""
        for pool in (self._hasher, self._allocator):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        self._hasher = self._allocator = None


def destination_array(spec: pb.TensorSpec) -> tuple[mx.array, memoryview]:
    """A new array for `spec` (bf16 as its uint16 words) and a writable view of its bytes."""
    mx_dtype = DTYPES[spec.dtype][0]
    value = mx.zeros(tuple(spec.shape), dtype=mx.uint16 if mx_dtype == mx.bfloat16 else mx_dtype)
    mx.eval(value)
    # A writable NumPy view of the MLX buffer (MLX documents np.array(a, copy=False) as shared).
    return value, memoryview(np.array(value, copy=False).reshape(-1)).cast("B")


def sha256_digest(*pieces: bytes | memoryview) -> bytes:
    """The sha256 of `pieces` laid end to end."""
    digest = hashlib.sha256()
    for piece in pieces:
        digest.update(piece)
    return digest.digest()


def parse_part(data: bytes | bytearray | memoryview) -> pb.SnapshotPart:
    try:
        return pb.SnapshotPart.FromString(bytes(data) if isinstance(data, memoryview) else data)
    except Exception as e:  # protobuf raises DecodeError, or RuntimeWarning-derived errors on some builds
        raise CodecError(f"not a snapshot message: {e}") from None


def decode(
    parts: Iterable[bytes | pb.SnapshotPart], max_bytes: int | None = None
) -> tuple[pb.SnapshotHeader, dict[str, mx.array]]:
    """Decode a whole snapshot stream (serialized or parsed messages)."""
    decoder = SnapshotDecoder(max_bytes)
    try:
        for part in parts:
            decoder.feed(part)
        return decoder.header, decoder.finish()
    finally:
        decoder.close()
