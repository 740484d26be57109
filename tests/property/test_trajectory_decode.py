"""`Trajectory.from_bytes` and `RolloutTask.from_bytes` on hostile bytes: random bytes, valid encodings with
flipped bytes, and well-formed msgpack maps whose fields hold hostile values. The only failure is
`TrajectoryDecodeError`, and what decodes satisfies the contract (finite numbers, exact dtypes, 0/1 mask,
log-probabilities <= 0) and round-trips."""

import math

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lazarus.data.trajectory import (MAX_BYTES, RolloutTask, SamplingSettings, Trajectory,
                                     TrajectoryDecodeError)

HOSTILE_SCALARS = st.one_of(
    st.none(), st.booleans(), st.sampled_from([0, 1, -1, 2**31, 2**62, 2**63 - 1, -(2**63), 2**64 - 1]),
    st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
    st.binary(max_size=20),
)
HOSTILE = st.recursive(HOSTILE_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=12)
DTYPES = st.sampled_from(["<i4", "<i8", "<f4", "<f8", "|i1", "|u1", "<u4", ">i4", "bogus", ""])


@st.composite
def hostile_arrays(draw):
    """{dtype, shape, data} specs that are almost right: wrong dtype, rank, length, or hostile values."""
    dtype = draw(DTYPES)
    shape = draw(st.one_of(st.lists(st.integers(-2, 6), min_size=0, max_size=3),
                           st.just([2**40]), st.just([-1]), HOSTILE))
    try:
        itemsize = np.dtype(dtype).itemsize
    except TypeError:
        itemsize = 4
    n = shape[0] if isinstance(shape, list) and shape and isinstance(shape[0], int) and 0 <= shape[0] < 64 else 3
    data = draw(st.one_of(st.binary(min_size=n * itemsize, max_size=n * itemsize), st.binary(max_size=40), HOSTILE))
    spec = {"dtype": dtype, "shape": shape, "data": data}
    if draw(st.booleans()):
        spec[draw(st.sampled_from(["extra", "dtype", "shape"]))] = draw(HOSTILE)
    return spec


def valid_trajectory() -> Trajectory:
    return Trajectory(prompt_ids=[1, 2, 3], completion_ids=[4, 5], behavior_logprobs=[-0.5, -1.0],
                      loss_mask=[1, 0], reward=1.0, group_id="g", policy_version=3, finish_reason="stop",
                      reward_components={"accuracy": 1.0}, info={"turns": 1}, task_id="t", actor_id="a",
                      sampling=SamplingSettings(0.7, 0.9, 5, 0.0), policy_version_end=4)


def valid_task() -> RolloutTask:
    return RolloutTask(task_id="t", prompts=[[1, 2], [3]], rows=[{"answer": "4"}, {"answer": "5"}],
                       group_ids=["g0", "g1"], group_size=4, sampling=SamplingSettings(), max_tokens=16,
                       policy_version=2, seed=7, env={"name": "math"})


@st.composite
def hostile_maps(draw, valid: dict):
    """The valid map with some fields replaced by hostile values (arrays by almost-right specs)."""
    obj = dict(valid)
    for key in draw(st.lists(st.sampled_from(sorted(valid) + ["unknown"]), min_size=1, max_size=4)):
        is_array = isinstance(valid.get(key), dict) and "dtype" in valid[key]
        obj[key] = draw(hostile_arrays() if is_array and draw(st.booleans()) else HOSTILE)
    if draw(st.booleans()):
        obj.pop(draw(st.sampled_from(sorted(valid))), None)
    return msgpack.packb(obj, use_bin_type=True)


def flipped(data: bytes, draw) -> bytes:
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        out[draw(st.integers(0, len(out) - 1))] ^= draw(st.integers(1, 255))
    return bytes(out)


def check_trajectory_contract(t: Trajectory) -> None:
    assert t.prompt_ids.dtype == np.int32 and t.completion_ids.dtype == np.int32
    assert t.prompt_ids.ndim == t.completion_ids.ndim == 1 and len(t.prompt_ids) > 0
    assert t.behavior_logprobs.dtype == np.float32 and np.isfinite(t.behavior_logprobs).all()
    assert (t.behavior_logprobs <= 1e-3).all() and set(np.unique(t.loss_mask)) <= {0, 1}
    assert math.isfinite(t.reward) and 0 <= t.policy_version <= t.policy_version_end
    assert Trajectory.from_bytes(t.to_bytes()).to_bytes() == t.to_bytes()


def decode_trajectory(data: bytes):
    try:
        t = Trajectory.from_bytes(data)
    except TrajectoryDecodeError:
        return None
    check_trajectory_contract(t)
    return t


def decode_task(data: bytes):
    try:
        task = RolloutTask.from_bytes(data)
    except TrajectoryDecodeError:
        return None
    assert RolloutTask.from_bytes(task.to_bytes()).to_bytes() == task.to_bytes()
    assert all(isinstance(i, int) for p in task.prompts for i in p)
    return task


SETTINGS = settings(max_examples=400, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
VALID_TRAJECTORY = msgpack.unpackb(valid_trajectory().to_bytes(), raw=False)
VALID_TASK = msgpack.unpackb(valid_task().to_bytes(), raw=False)


@SETTINGS
@given(st.binary(max_size=512))
def test_random_bytes_decode_only_to_trajectory_decode_error(data):
    decode_trajectory(data)
    decode_task(data)


@SETTINGS
@given(st.data())
def test_flipped_bytes_of_valid_encodings_decode_only_to_valid_records_or_the_error(data):
    decode_trajectory(flipped(valid_trajectory().to_bytes(), data.draw))
    decode_task(flipped(valid_task().to_bytes(), data.draw))


@SETTINGS
@given(hostile_maps(VALID_TRAJECTORY))
def test_hostile_trajectory_fields_give_only_the_error_naming_a_field(data):
    decode_trajectory(data)


@SETTINGS
@given(hostile_maps(VALID_TASK))
def test_hostile_task_fields_give_only_the_error(data):
    decode_task(data)


def test_oversized_and_deeply_nested_inputs_are_refused_without_building_them():
    with pytest.raises(TrajectoryDecodeError, match="byte limit"):
        Trajectory.from_bytes(b"\x00" * (MAX_BYTES + 1))
    deep = b"\x91" * 100_000 + b"\xc0"  # a 100,000-deep nested list
    with pytest.raises(TrajectoryDecodeError):
        Trajectory.from_bytes(deep)


# --- holes found by the property tests above (the decoders are the lead's; see the report) -------------


def hostile_task(**fields) -> bytes:
    return msgpack.packb({**VALID_TASK, **fields}, use_bin_type=True)


def test_task_with_a_negative_seed_is_refused():
    with pytest.raises(TrajectoryDecodeError, match="seed"):
        RolloutTask.from_bytes(hostile_task(seed=-1))


@pytest.mark.parametrize("sampling", [{"temperature": -1.0}, {"top_p": 0.0}, {"top_p": 2.0}, {"top_k": -3},
                                      {"min_p": 1.5}])
def test_sampling_settings_out_of_their_range_are_refused(sampling):
    with pytest.raises(TrajectoryDecodeError, match="sampling"):
        RolloutTask.from_bytes(hostile_task(sampling=sampling))


@pytest.mark.parametrize("field", ["group_size", "max_tokens"])
def test_task_asking_for_unbounded_work_is_refused(field):
    with pytest.raises(TrajectoryDecodeError, match=field):
        RolloutTask.from_bytes(hostile_task(**{field: 2**61}))
