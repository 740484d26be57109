"""Snapshot codec: every MLX dtype round-trips bit-exactly, chunks stay under 4 MiB, damage is named."""

import hashlib

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mlx.utils import tree_flatten

from lazarus.distributed import codec
from lazarus.distributed import parameter_server_pb2 as pb

SMALL_CHUNK = 1000


def every_dtype() -> dict[str, mx.array]:
    values = mx.array(np.linspace(-3.5, 3.5, 24, dtype=np.float32).reshape(2, 3, 4))
    tensors = {f"t.{name}": values.astype(dtype) for name, (dtype, _) in codec.DTYPES.items()
               if name not in ("bool", "complex64")}
    tensors["t.bool"] = values > 0
    tensors["t.complex64"] = values.astype(mx.complex64)
    tensors["t.empty"] = mx.zeros((0, 5))
    tensors["t.transposed"] = values.reshape(6, 4).T
    return tensors


def parts_of(encoded):
    return [pb.SnapshotPart.FromString(p) for p in encoded.parts]


def test_every_mlx_dtype_round_trips_bit_exactly():
    # given one tensor of every dtype MLX has, plus an empty and a non-contiguous one
    tensors = every_dtype()
    # when encoded in small chunks and decoded
    header, decoded = codec.decode(codec.encode(tensors, version=7, chunk_bytes=SMALL_CHUNK).parts)
    # then names, dtypes, shapes and bits are unchanged
    assert header.version == 7 and list(decoded) == list(tensors)
    for name, value in tensors.items():
        assert decoded[name].dtype == value.dtype and decoded[name].shape == value.shape, name
        assert mx.array_equal(decoded[name], value).item(), name


def test_bfloat16_travels_as_its_raw_two_byte_words():
    # given a bf16 tensor
    value = mx.array([1.0, -2.5, 3.140625], dtype=mx.bfloat16)
    # when encoded
    encoded = codec.encode({"w": value}, version=0)
    # then the payload is exactly the tensor's 16-bit words, and the header says bfloat16
    chunk = parts_of(encoded)[1].chunk
    assert chunk.data == np.array(value.view(mx.uint16)).astype("<u2").tobytes()
    assert encoded.header.tensors[0].dtype == "bfloat16" and encoded.header.tensors[0].nbytes == 6


def test_quantized_model_weights_round_trip(tiny_model_dir):
    # given a 4-bit quantized model (packed uint32 weights, bf16/float scales and biases)
    from lazarus.models.load import load

    model, _ = load(tiny_model_dir)
    nn.quantize(model, group_size=64, bits=4)
    weights = dict(tree_flatten(model.parameters()))
    assert any(v.dtype == mx.uint32 for v in weights.values())
    # when the snapshot round-trips
    _, decoded = codec.decode(codec.encode(weights, version=1).parts)
    # then every tensor is identical
    assert all(mx.array_equal(decoded[k], v).item() and decoded[k].dtype == v.dtype for k, v in weights.items())


def test_every_serialized_message_is_under_four_mebibytes():
    # given a 10 MB tensor
    tensors = {"big": mx.zeros((10 * 1024 * 1024 // 4,)), "small": mx.ones((3,))}
    # when encoded with the default chunk size
    encoded = codec.encode(tensors, version=0)
    # then it spans several chunks and every message, framing included, stays under 4 MiB
    assert encoded.header.num_chunks == 3
    assert all(len(p) < codec.MESSAGE_LIMIT for p in encoded.parts)


def test_snapshot_sha256_is_the_sha256_of_its_chunk_digests_in_order():
    tensors = {"a": mx.arange(10, dtype=mx.int32), "b": mx.ones((2, 2), dtype=mx.float16)}
    chunks = [part.chunk for part in parts_of(codec.encode(tensors, version=0, chunk_bytes=16))[1:]]
    assert all(c.sha256 == hashlib.sha256(c.data).digest() for c in chunks)
    assert b"".join(c.data for c in chunks) == np.arange(10, dtype="<i4").tobytes() + np.ones(4, "<f2").tobytes()
    header = codec.encode(tensors, version=0, chunk_bytes=16).header
    assert header.sha256 == hashlib.sha256(b"".join(c.sha256 for c in chunks)).digest()


def test_a_flipped_byte_in_a_chunk_is_rejected_naming_the_tensor():
    # given a snapshot whose second chunk lies inside tensor "layers.1.weight"
    tensors = {"layers.0.weight": mx.ones((250,)), "layers.1.weight": mx.ones((500,)), "norm": mx.ones((250,))}
    parts = parts_of(codec.encode(tensors, version=0, chunk_bytes=SMALL_CHUNK))
    # when one byte of that chunk is flipped on the way
    damaged = bytearray(parts[2].chunk.data)
    damaged[17] ^= 0x01
    parts[2].chunk.data = bytes(damaged)
    # then decoding fails and names the tensor
    with pytest.raises(codec.CodecError, match=r"corrupt chunk 1 .*layers\.1\.weight"):
        codec.decode(parts)


def test_a_missing_chunk_is_rejected_naming_the_tensor():
    tensors = {"embed": mx.ones((250,)), "head": mx.ones((500,))}
    parts = parts_of(codec.encode(tensors, version=0, chunk_bytes=SMALL_CHUNK))
    with pytest.raises(codec.CodecError, match=r"missing chunk\(s\) 1\.\.1 covering tensor\(s\) head"):
        codec.decode(parts[:2] + parts[3:])


def test_a_truncated_stream_names_the_tensors_never_received():
    tensors = {"embed": mx.ones((250,)), "head": mx.ones((500,))}
    parts = parts_of(codec.encode(tensors, version=0, chunk_bytes=SMALL_CHUNK))
    with pytest.raises(codec.CodecError, match=r"ended after 1 of 3 chunks: missing tensor\(s\) head"):
        codec.decode(parts[:2])


def test_a_chunk_replaced_together_with_its_digest_is_caught_by_the_snapshot_sha256():
    tensors = {"w": mx.ones((500,))}
    parts = parts_of(codec.encode(tensors, version=0, chunk_bytes=SMALL_CHUNK))
    parts[1].chunk.data = b"\xff" + parts[1].chunk.data[1:]
    parts[1].chunk.sha256 = hashlib.sha256(parts[1].chunk.data).digest()
    with pytest.raises(codec.CodecError, match="snapshot sha256 does not match"):
        codec.decode(parts)


@pytest.mark.parametrize("edit, message", [
    (lambda h: h.tensors[0].shape.append(1 << 40), "do not match shape"),
    (lambda h: setattr(h.tensors[0], "dtype", "float128"), "unknown dtype"),
    (lambda h: setattr(h, "total_bytes", 1 << 62), "tensors add up to"),
    (lambda h: setattr(h, "num_chunks", 1), "chunks for"),
    (lambda h: setattr(h.tensors[1], "name", "a"), "repeated"),
])
def test_an_inconsistent_header_is_rejected_before_memory_is_reserved(edit, message):
    header = codec.encode({"a": mx.ones((300,)), "b": mx.ones((2,))}, version=0, chunk_bytes=SMALL_CHUNK).header
    edit(header)
    with pytest.raises(codec.CodecError, match=message):
        codec.SnapshotDecoder().feed(pb.SnapshotPart(header=header))


def test_a_snapshot_larger_than_allowed_is_refused_from_its_header():
    encoded = codec.encode({"a": mx.ones((300,))}, version=0)
    with pytest.raises(codec.CodecError, match="larger than the 100 bytes allowed"):
        codec.decode(encoded.parts, max_bytes=100)


FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.lists(st.binary(max_size=300), max_size=6))
def test_random_bytes_never_escape_the_decoder_as_anything_but_codec_error(messages):
    try:
        codec.decode(messages)
    except codec.CodecError:
        pass


specs = st.builds(pb.TensorSpec, name=st.text(max_size=4), dtype=st.sampled_from([*codec.DTYPES, "x"]),
                  shape=st.lists(st.integers(-2, 1 << 20), max_size=3),
                  offset=st.integers(0, 1 << 40), nbytes=st.integers(0, 1 << 40))
headers = st.builds(pb.SnapshotHeader, version=st.integers(-5, 5), tensors=st.lists(specs, max_size=3),
                    total_bytes=st.integers(0, 1 << 62), chunk_bytes=st.integers(0, 1 << 23),
                    num_chunks=st.integers(0, 10), sha256=st.binary(min_size=0, max_size=32))
chunks = st.builds(pb.Chunk, index=st.integers(0, 4), offset=st.integers(0, 1 << 20),
                   data=st.binary(max_size=64), sha256=st.binary(max_size=32))


@FUZZ
@given(headers, st.lists(chunks, max_size=4))
def test_random_structured_messages_only_raise_codec_error(header, body):
    parts = [pb.SnapshotPart(header=header)] + [pb.SnapshotPart(chunk=c) for c in body]
    try:
        codec.decode(parts)
    except codec.CodecError:
        pass


@FUZZ
@given(index=st.integers(0, (1 << 32) - 1), offset=st.integers(0, (1 << 64) - 1), data=st.binary(max_size=300),
       digest=st.binary(max_size=40))
def test_hand_framed_chunk_messages_are_what_protobuf_reads_and_writes(index, offset, data, digest):
    # given a chunk framed by the codec, and the same chunk serialized by protobuf
    framed = codec.chunk_message(index, offset, data, digest)
    expected = pb.SnapshotPart(chunk=pb.Chunk(index=index, offset=offset, data=data, sha256=digest))
    # then protobuf reads the framing as the same message, and read_chunk reads protobuf's bytes alike
    assert pb.SnapshotPart.FromString(framed) == expected
    raw = codec.read_chunk(expected.SerializeToString())
    assert (raw.index, raw.offset, bytes(raw.data), raw.sha256) == (index, offset, data, digest)


@FUZZ
@given(st.binary(max_size=120))
def test_read_chunk_on_random_bytes_agrees_with_protobuf_or_declines(message):
    try:
        raw = codec.read_chunk(message)
    except codec.CodecError:
        return
    if raw is None:
        return
    parsed = pb.SnapshotPart.FromString(message).chunk  # anything read_chunk accepts, protobuf accepts
    assert (raw.index, raw.offset, bytes(raw.data), raw.sha256) == (parsed.index, parsed.offset, parsed.data,
                                                                    parsed.sha256)


def test_a_snapshot_decodes_from_serialized_messages_and_from_parsed_ones_alike():
    tensors = {"a": mx.arange(3000, dtype=mx.float32), "b": mx.ones((7,), dtype=mx.bfloat16)}
    encoded = codec.encode(tensors, version=2, chunk_bytes=SMALL_CHUNK)
    _, from_bytes = codec.decode(encoded.parts)
    _, from_parsed = codec.decode(parts_of(encoded))
    for name, value in tensors.items():
        assert mx.array_equal(from_bytes[name], value).item() and mx.array_equal(from_parsed[name], value).item()


def test_a_corrupt_chunk_is_rejected_while_the_stream_is_still_arriving():
    # given a long snapshot whose first chunk is damaged on the way
    tensors = {"embed": mx.ones((250,)), "layers.0.weight": mx.ones((5000,))}
    parts = parts_of(codec.encode(tensors, version=0, chunk_bytes=SMALL_CHUNK))
    damaged = bytearray(parts[1].chunk.data)
    damaged[3] ^= 0x80
    parts[1].chunk.data = bytes(damaged)
    decoder = codec.SnapshotDecoder()
    decoder.feed(parts[0])
    # when the chunks are fed one by one
    # then the damage is reported at most HASHES_IN_FLIGHT chunks later, long before the stream ends
    fed = 0
    with pytest.raises(codec.CodecError, match=r"corrupt chunk 0 .*embed"):
        for part in parts[1:]:
            decoder.feed(part)
            fed += 1
    decoder.close()
    assert fed <= codec.SnapshotDecoder.HASHES_IN_FLIGHT < len(parts) - 1


def test_abandoning_a_stream_stops_the_decoder_threads():
    import threading

    # given a decoder that has started on a snapshot (allocating and hashing on helper threads)
    before = set(threading.enumerate())
    parts = codec.encode({"a": mx.ones((3000,)), "b": mx.ones((3000,))}, version=0, chunk_bytes=SMALL_CHUNK).parts
    decoder = codec.SnapshotDecoder()
    for part in parts[:3]:
        decoder.feed(part)
    # when the caller gives up on the stream
    decoder.close()
    # then no helper thread outlives it
    assert [t.name for t in set(threading.enumerate()) - before if t.is_alive()] == []


def test_malloc_settings_from_the_environment_are_left_alone(monkeypatch):
    # given a process whose environment sets glibc's malloc tunables
    monkeypatch.setattr(codec, "_malloc_tuned", False)
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    # when the transport asks to keep message buffers
    # then it changes nothing
    assert codec.keep_message_buffers() is False


def test_a_header_alone_reserves_no_tensor_memory():
    # given the header of a 256 MiB snapshot, and nothing sent after it
    header = codec.encode({"a": mx.ones((3000,))}, version=0, chunk_bytes=SMALL_CHUNK).header
    header.tensors[0].shape[:] = [1 << 26]
    header.tensors[0].nbytes = header.total_bytes = 1 << 28
    header.num_chunks = -(-(1 << 28) // SMALL_CHUNK)
    active = mx.get_active_memory()
    decoder = codec.SnapshotDecoder()
    # when the header is accepted and the stream then abandoned
    decoder.feed(pb.SnapshotPart(header=header))
    decoder.close()
    # then no tensor memory was reserved: a peer must send data before memory is set aside for it
    assert decoder.header is not None and mx.get_active_memory() - active < 1 << 20
