"""`Trajectory` and `RolloutTask`: what travels between the roles of the runtime.

A `RolloutTask` is what the coordinator asks a rollout actor to do (prompts, group size, sampling
settings, the version it was issued at); a `Trajectory` is one sampled completion with everything the
learner needs. Token ids and their behaviour logprobs travel exactly as generated (never re-tokenized).

Both serialize with msgpack; arrays go as raw bytes + dtype + shape. Decoding is strict: exact dtypes and
ranks, finite numbers, bounded sizes, and one error type (`TrajectoryDecodeError`) naming the field, so
bytes from the network can never crash the learner or be cast lossily into something else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from lazarus.errors import LazarusError

FORMAT_VERSION = 2
TASK_FORMAT_VERSION = 1
MAX_TOKENS = 1 << 20  # per array: far above any context length, far below what could exhaust memory
MAX_BYTES = 64 << 20  # one encoded trajectory or task
MAX_GROUP_SIZE = 1024
_DTYPES = {"prompt_ids": "<i4", "completion_ids": "<i4", "behavior_logprobs": "<f4", "loss_mask": "|i1"}


class TrajectoryDecodeError(LazarusError, ValueError):
    """Bytes or values that do not make a valid `Trajectory`/`RolloutTask` (names the field that is wrong)."""


@dataclass(frozen=True)
class SamplingSettings:
    """The sampling distribution a completion was drawn from (the learner must be able to correct for it)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0

    def to_dict(self) -> dict:
        return {"temperature": float(self.temperature), "top_p": float(self.top_p), "top_k": int(self.top_k),
                "min_p": float(self.min_p)}

    @classmethod
    def from_dict(cls, obj: Any, where: str = "sampling") -> SamplingSettings:
        if not isinstance(obj, dict):
            raise TrajectoryDecodeError(f"{where}: expected a map, got {type(obj).__name__}")
        unknown = set(obj) - {"temperature", "top_p", "top_k", "min_p"}
        if unknown:
            raise TrajectoryDecodeError(f"{where}: unknown keys {sorted(unknown)}")
        settings = cls(temperature=_finite(obj.get("temperature", 1.0), f"{where}.temperature"),
                       top_p=_finite(obj.get("top_p", 1.0), f"{where}.top_p"),
                       top_k=_int(obj.get("top_k", 0), f"{where}.top_k"),
                       min_p=_finite(obj.get("min_p", 0.0), f"{where}.min_p"))
        for name, ok, rule in (("temperature", settings.temperature >= 0, ">= 0"),
                               ("top_p", 0 < settings.top_p <= 1, "in (0, 1]"),
                               ("top_k", settings.top_k >= 0, ">= 0"),
                               ("min_p", 0 <= settings.min_p < 1, "in [0, 1)")):
            if not ok:
                raise TrajectoryDecodeError(f"{where}.{name}: {getattr(settings, name)} is not {rule}")
        return settings

    @property
    def truncated(self) -> bool:
        """Whether top-k/top-p/min-p cut the distribution (the learner's full softmax is then not it)."""
        return (0 < self.top_p < 1) or self.top_k > 0 or self.min_p > 0


@dataclass
class Trajectory:
    prompt_ids: np.ndarray  # int32 [P]
    completion_ids: np.ndarray  # int32 [C]: a multi-turn episode holds model and env tokens in order
    behavior_logprobs: np.ndarray  # float32 [C]: logprob of each model token when sampled (0 at env tokens)
    loss_mask: np.ndarray  # int8 [C]: 1 for model tokens, 0 for env/tool tokens
    reward: float
    group_id: str  # the completions of one prompt share it; unique across actors
    policy_version: int  # the policy version generation started with
    finish_reason: str = "stop"
    reward_components: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    task_id: str = ""
    actor_id: str = ""
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    policy_version_end: int | None = None  # the version when generation finished (None: same as start)

    def __post_init__(self):
        self.prompt_ids = np.asarray(self.prompt_ids, dtype=np.int32)
        self.completion_ids = np.asarray(self.completion_ids, dtype=np.int32)
        self.behavior_logprobs = np.asarray(self.behavior_logprobs, dtype=np.float32)
        self.loss_mask = (np.ones_like(self.completion_ids, dtype=np.int8) if self.loss_mask is None
                          else np.asarray(self.loss_mask, dtype=np.int8))
        if self.policy_version_end is None:
            self.policy_version_end = self.policy_version
        n = len(self.completion_ids)
        for name in ("behavior_logprobs", "loss_mask"):
            if len(getattr(self, name)) != n:
                raise TrajectoryDecodeError(f"Trajectory.{name} has {len(getattr(self, name))} entries, "
                                            f"completion_ids has {n}")

    def to_bytes(self) -> bytes:
        return msgpack.packb({
            "v": FORMAT_VERSION,
            "prompt_ids": _pack_array(self.prompt_ids),
            "completion_ids": _pack_array(self.completion_ids),
            "behavior_logprobs": _pack_array(self.behavior_logprobs),
            "loss_mask": _pack_array(self.loss_mask),
            "reward": float(self.reward),
            "group_id": self.group_id,
            "task_id": self.task_id,
            "actor_id": self.actor_id,
            "policy_version": int(self.policy_version),
            "policy_version_end": int(self.policy_version_end),
            "sampling": self.sampling.to_dict(),
            "finish_reason": self.finish_reason,
            "reward_components": {k: float(v) for k, v in self.reward_components.items()},
            "info": self.info,
        }, use_bin_type=True)

    @classmethod
    def from_bytes(cls, data: bytes) -> Trajectory:
        """Decode and validate; every problem raises `TrajectoryDecodeError` naming the field."""
        obj = _unpack(data, "trajectory")
        if obj.get("v") != FORMAT_VERSION:
            raise TrajectoryDecodeError(f"v: unsupported trajectory format {obj.get('v')!r} "
                                        f"(this learner reads format {FORMAT_VERSION})")
        arrays = {name: _unpack_array(obj, name) for name in _DTYPES}
        mask = arrays["loss_mask"]
        if mask.size and not np.isin(mask, (0, 1)).all():
            raise TrajectoryDecodeError("loss_mask: values must be 0 or 1")
        logprobs = arrays["behavior_logprobs"]
        if not np.isfinite(logprobs).all() or (logprobs > 1e-3).any():
            raise TrajectoryDecodeError("behavior_logprobs: values must be finite log-probabilities (<= 0)")
        for name in ("prompt_ids", "completion_ids"):
            if (arrays[name] < 0).any():
                raise TrajectoryDecodeError(f"{name}: token ids must be >= 0")
        if len(arrays["prompt_ids"]) == 0:
            raise TrajectoryDecodeError("prompt_ids: empty")
        components = obj.get("reward_components", {})
        if not isinstance(components, dict):
            raise TrajectoryDecodeError("reward_components: expected a map")
        info = obj.get("info", {})
        if not isinstance(info, dict):
            raise TrajectoryDecodeError("info: expected a map")
        start = _int(_field(obj, "policy_version"), "policy_version")
        end = _int(obj.get("policy_version_end", start), "policy_version_end")
        if start < 0 or end < start:
            raise TrajectoryDecodeError(f"policy_version_end: {end} is before policy_version {start}")
        return cls(
            **arrays,
            reward=_finite(_field(obj, "reward"), "reward"),
            group_id=_str(_field(obj, "group_id"), "group_id", nonempty=True),
            task_id=_str(obj.get("task_id", ""), "task_id"),
            actor_id=_str(obj.get("actor_id", ""), "actor_id"),
            policy_version=start,
            policy_version_end=end,
            sampling=SamplingSettings.from_dict(obj.get("sampling", {})),
            finish_reason=_str(_field(obj, "finish_reason"), "finish_reason"),
            reward_components={_str(k, "reward_components key"): _finite(v, f"reward_components.{k}", nan_ok=True)
                               for k, v in components.items()},
            info=info,
        )

    @property
    def num_completion_tokens(self) -> int:
        return int(len(self.completion_ids))

    @property
    def num_model_tokens(self) -> int:
        return int(self.loss_mask.sum())


@dataclass
class RolloutTask:
    """Work for one rollout actor: `group_size` completions for each prompt, sampled as `sampling` says.

    `prompts` are token ids (already templated); `rows` are the matching dataset rows (prompt text and the
    reward columns, e.g. `answer`) for the reward functions or the env. `group_ids` name each prompt's group
    uniquely across the run. `policy_version` is the learner's version when the task was issued.
    """

    task_id: str
    prompts: list[list[int]]
    rows: list[dict]
    group_ids: list[str]
    group_size: int
    sampling: SamplingSettings
    max_tokens: int
    policy_version: int
    seed: int = 0
    env: dict = field(default_factory=dict)  # env name and settings; {} = the run's reward functions

    def __post_init__(self):
        n = len(self.prompts)
        if n == 0:
            raise TrajectoryDecodeError(f"task {self.task_id}: prompts: empty")
        if len(self.rows) != n or len(self.group_ids) != n:
            raise TrajectoryDecodeError(f"task {self.task_id}: {n} prompts but {len(self.rows)} rows and "
                                        f"{len(self.group_ids)} group ids")
        if not 1 <= self.group_size <= MAX_GROUP_SIZE:
            raise TrajectoryDecodeError(f"task {self.task_id}: group_size {self.group_size} is outside "
                                        f"[1, {MAX_GROUP_SIZE}]")
        if not 1 <= self.max_tokens <= MAX_TOKENS:
            raise TrajectoryDecodeError(f"task {self.task_id}: max_tokens {self.max_tokens} is outside "
                                        f"[1, {MAX_TOKENS}]")
        if not 0 <= self.seed < (1 << 63):
            raise TrajectoryDecodeError(f"task {self.task_id}: seed {self.seed} is outside [0, 2^63)")

    def to_bytes(self) -> bytes:
        return msgpack.packb({
            "v": TASK_FORMAT_VERSION, "task_id": self.task_id,
            "prompts": [_pack_array(np.asarray(p, np.int32)) for p in self.prompts],
            "rows": self.rows, "group_ids": self.group_ids, "group_size": self.group_size,
            "sampling": self.sampling.to_dict(), "max_tokens": self.max_tokens,
            "policy_version": self.policy_version, "seed": self.seed, "env": self.env,
        }, use_bin_type=True)

    @classmethod
    def from_bytes(cls, data: bytes) -> RolloutTask:
        obj = _unpack(data, "task")
        if obj.get("v") != TASK_FORMAT_VERSION:
            raise TrajectoryDecodeError(f"v: unsupported task format {obj.get('v')!r}")
        prompts = _field(obj, "prompts")
        rows, group_ids = _field(obj, "rows"), _field(obj, "group_ids")
        if not (isinstance(prompts, list) and isinstance(rows, list) and isinstance(group_ids, list)):
            raise TrajectoryDecodeError("prompts, rows and group_ids must be lists")
        if not all(isinstance(r, dict) for r in rows):
            raise TrajectoryDecodeError("rows: every row must be a map")
        env = obj.get("env", {})
        if not isinstance(env, dict):
            raise TrajectoryDecodeError("env: expected a map")
        return cls(
            task_id=_str(_field(obj, "task_id"), "task_id", nonempty=True),
            prompts=[_unpack_array({"p": p}, "p", "<i4", f"prompts[{i}]").tolist() for i, p in enumerate(prompts)],
            rows=rows, group_ids=[_str(g, "group_ids", nonempty=True) for g in group_ids],
            group_size=_int(_field(obj, "group_size"), "group_size"),
            sampling=SamplingSettings.from_dict(_field(obj, "sampling")),
            max_tokens=_int(_field(obj, "max_tokens"), "max_tokens"),
            policy_version=_int(_field(obj, "policy_version"), "policy_version"),
            seed=_int(obj.get("seed", 0), "seed"), env=env)


# -- strict decoding helpers ---------------------------------------------------------------------------


def _unpack(data: bytes, what: str) -> dict:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TrajectoryDecodeError(f"{what}: expected bytes, got {type(data).__name__}")
    if len(data) > MAX_BYTES:
        raise TrajectoryDecodeError(f"{what}: {len(data)} bytes is over the {MAX_BYTES} byte limit")
    try:
        obj = msgpack.unpackb(bytes(data), raw=False, strict_map_key=True)
    except Exception as e:  # msgpack raises several unrelated types on garbage
        raise TrajectoryDecodeError(f"{what}: not msgpack: {type(e).__name__}: {e}") from None
    if not isinstance(obj, dict):
        raise TrajectoryDecodeError(f"{what}: expected a map at the top level, got {type(obj).__name__}")
    return obj


def _field(obj: dict, name: str):
    if name not in obj:
        raise TrajectoryDecodeError(f"{name}: missing")
    return obj[name]


def _finite(value, name: str, nan_ok: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TrajectoryDecodeError(f"{name}: expected a number, got {type(value).__name__}")
    try:
        x = float(value)
    except OverflowError:
        raise TrajectoryDecodeError(f"{name}: {value} does not fit a float") from None
    if math.isnan(x) and nan_ok:
        return x
    if not math.isfinite(x):
        raise TrajectoryDecodeError(f"{name}: must be finite, got {x}")
    return x


def _int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TrajectoryDecodeError(f"{name}: expected an integer, got {type(value).__name__}")
    if not -(1 << 62) < value < (1 << 62):
        raise TrajectoryDecodeError(f"{name}: {value} is out of range")
    return value


def _str(value, name: str, nonempty: bool = False) -> str:
    if not isinstance(value, str):
        raise TrajectoryDecodeError(f"{name}: expected a string, got {type(value).__name__}")
    if nonempty and not value:
        raise TrajectoryDecodeError(f"{name}: empty")
    if len(value) > 4096:
        raise TrajectoryDecodeError(f"{name}: longer than 4096 characters")
    return value


def _pack_array(a: np.ndarray) -> dict:
    return {"dtype": a.dtype.str, "shape": list(a.shape), "data": a.tobytes()}


def _unpack_array(obj: dict, name: str, dtype: str | None = None, label: str | None = None) -> np.ndarray:
    """A 1-D array of exactly `dtype` (no casts: float or int64 token ids are refused, not rounded)."""
    label = label or name
    expected = np.dtype(dtype or _DTYPES[name])
    spec = obj.get(name)
    if not isinstance(spec, dict) or set(spec) != {"dtype", "shape", "data"}:
        raise TrajectoryDecodeError(f"{label}: expected {{dtype, shape, data}}")
    if spec["dtype"] != expected.str:
        raise TrajectoryDecodeError(f"{label}: dtype must be {expected.str} ({expected.name}), got {spec['dtype']!r}")
    shape, data = spec["shape"], spec["data"]
    if not isinstance(shape, list) or len(shape) != 1:
        raise TrajectoryDecodeError(f"{label}: must be 1-D, got shape {shape!r}")
    n = _int(shape[0], f"{label}.shape")
    if not 0 <= n <= MAX_TOKENS:
        raise TrajectoryDecodeError(f"{label}: length {n} is outside [0, {MAX_TOKENS}]")
    if not isinstance(data, bytes) or len(data) != n * expected.itemsize:
        raise TrajectoryDecodeError(f"{label}: data does not hold {n} values of {expected.name}")
    return np.frombuffer(data, dtype=expected).copy()
