"""The gradient-push stream on hostile input: valid pushes damaged every way a peer could (parts dropped,
repeated, reordered, bytes flipped, header fields set to extreme values, NaN payloads, garbage appended)
are decoded and applied by the server's own path (`SnapshotDecoder` with the store's header check, then
`ParameterStore.push`). Only the project's refusals come out, and the store only ever holds finite
weights at a version that a complete, valid push produced."""

import struct

import mlx.core as mx
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lazarus.distributed import codec
from lazarus.distributed import parameter_server_pb2 as pb
from lazarus.distributed.server import DuplicateGradient, GradientRejected, ParameterStore, StaleGradient

WEIGHTS = {"embed.weight": mx.array(np.random.default_rng(0).standard_normal((24, 8), dtype=np.float32)),
           "norm.weight": mx.ones((8,), mx.bfloat16)}
REFUSALS = (codec.CodecError, GradientRejected, StaleGradient, DuplicateGradient)
EXTREMES = st.sampled_from([0, 1, 7, 255, 2**31 - 1, 2**32 - 1, 2**63 - 1, -1, -(2**63)])


def valid_push(nan_at: int | None = None) -> list[bytes]:
    grads = {k: mx.ones(v.shape, v.dtype) * 0.01 for k, v in WEIGHTS.items()}
    if nan_at is not None:
        flat = grads["embed.weight"].reshape(-1)
        grads["embed.weight"] = flat.at[nan_at % flat.size].add(float("nan")).reshape(24, 8)
    return codec.encode(grads, version=0, worker_id="w", push_id="p", chunk_bytes=256).parts


def set_header_field(parts, field, value):
    try:
        message = pb.SnapshotPart.FromString(parts[0])
    except Exception:  # already damaged beyond parsing
        return parts
    if message.WhichOneof("part") != "header" or not message.header.tensors:
        return parts
    header = message.header
    try:
        if field == "spec.offset":
            header.tensors[0].offset = value
        elif field == "spec.nbytes":
            header.tensors[-1].nbytes = value
        elif field == "spec.shape":
            header.tensors[0].shape[0] = value
        else:
            setattr(header, field, value)
    except (ValueError, TypeError):  # out of the field's range: protobuf itself refuses to set it
        return parts
    return [message.SerializeToString()] + parts[1:]


def damage(parts: list[bytes], draw) -> list[bytes]:
    parts = list(parts)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["drop", "repeat", "swap", "flip", "field", "garbage", "truncate"]))
        i = draw(st.integers(0, len(parts) - 1)) if parts else 0
        if not parts:
            break
        if kind == "drop":
            del parts[i]
        elif kind == "repeat":
            parts.insert(i, parts[i])
        elif kind == "swap":
            j = draw(st.integers(0, len(parts) - 1))
            parts[i], parts[j] = parts[j], parts[i]
        elif kind == "flip":
            data = bytearray(parts[i])
            at = draw(st.integers(0, max(len(data) - 1, 0)))
            if data:
                data[at] ^= draw(st.integers(1, 255))
            parts[i] = bytes(data)
        elif kind == "field":
            field = draw(st.sampled_from(["total_bytes", "chunk_bytes", "num_chunks", "version", "spec.offset",
                                          "spec.nbytes", "spec.shape", "unchanged"]))
            parts = set_header_field(parts, field, draw(EXTREMES) if field != "unchanged" else True)
        elif kind == "garbage":
            parts.insert(i, draw(st.binary(max_size=64)) + struct.pack("<Q", draw(EXTREMES) & (2**64 - 1)))
        else:
            parts[i] = parts[i][: draw(st.integers(0, len(parts[i])))]
    return parts


def push_like_the_server(store: ParameterStore, parts: list[bytes]):
    """What ParameterService.PushGradients does with a stream (minus gRPC)."""
    decoder = codec.SnapshotDecoder(accept_header=store.check_gradient_header)
    try:
        if not parts:
            raise codec.CodecError("gradient push has no header")
        header = codec.parse_part(parts[0]).header
        for part in parts:
            decoder.feed(part)
        grads = decoder.finish()
        return store.push(header.version, grads, header.worker_id, header.push_id)
    finally:
        decoder.close()


@settings(max_examples=300, deadline=3000, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_damaged_gradient_push_gives_only_refusals_and_never_invalid_weights(data):
    # given a store, and a valid push damaged in up to three ways (sometimes carrying a NaN)
    store = ParameterStore(dict(WEIGHTS), mode="async", max_staleness=1)
    nan_at = data.draw(st.one_of(st.none(), st.integers(0, 191)))
    parts = damage(valid_push(nan_at), data.draw)
    # when the server decodes and applies it
    try:
        outcome = push_like_the_server(store, parts)
    except REFUSALS:
        # then a refusal leaves the store exactly as it was
        assert store.version == 0
        assert all(mx.array_equal(store.weights[k], WEIGHTS[k]).item() for k in WEIGHTS)
        return
    # or it was a push that still decodes to the valid gradient: applied, finite
    assert outcome.applied and store.version == 1 and nan_at is None
    assert all(mx.all(mx.isfinite(v)).item() for v in store.weights.values())


def test_an_undamaged_push_is_applied():
    store = ParameterStore(dict(WEIGHTS), mode="async")
    assert push_like_the_server(store, valid_push()).applied and store.version == 1


def test_a_nan_payload_with_valid_checksums_is_refused_naming_the_tensor():
    store = ParameterStore(dict(WEIGHTS), mode="async")
    try:
        push_like_the_server(store, valid_push(nan_at=5))
    except GradientRejected as e:
        assert "embed.weight" in str(e) and store.version == 0
    else:
        raise AssertionError("a NaN gradient was applied")
