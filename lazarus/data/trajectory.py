"""`Trajectory`: one sampled completion with everything the learner needs, as it travels between roles.

Token ids and their behavior logprobs travel exactly as generated (never re-tokenized). Serialized
with msgpack; arrays go as raw bytes + dtype + shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

FORMAT_VERSION = 1


class TrajectoryDecodeError(ValueError):
    """Bytes that do not decode to a valid `Trajectory` (names the field that is wrong)."""


@dataclass
class Trajectory:
    prompt_ids: np.ndarray  # int32 [P]
    completion_ids: np.ndarray  # int32 [C]
    behavior_logprobs: np.ndarray  # float32 [C]: logprob of each completion token when it was sampled
    loss_mask: np.ndarray  # int8 [C]: 1 for model tokens, 0 for env/tool tokens in multi-turn episodes
    reward: float
    group_id: str
    policy_version: int
    finish_reason: str = "stop"
    reward_components: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.prompt_ids = np.asarray(self.prompt_ids, dtype=np.int32)
        self.completion_ids = np.asarray(self.completion_ids, dtype=np.int32)
        self.behavior_logprobs = np.asarray(self.behavior_logprobs, dtype=np.float32)
        self.loss_mask = (np.ones_like(self.completion_ids, dtype=np.int8) if self.loss_mask is None
                          else np.asarray(self.loss_mask, dtype=np.int8))
        n = len(self.completion_ids)
        for name in ("behavior_logprobs", "loss_mask"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"Trajectory.{name} has {len(getattr(self, name))} entries, "
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
            "policy_version": int(self.policy_version),
            "finish_reason": self.finish_reason,
            "reward_components": {k: float(v) for k, v in self.reward_components.items()},
            "info": self.info,
        }, use_bin_type=True)

    @classmethod
    def from_bytes(cls, data: bytes) -> "Trajectory":
        try:
            obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
        except Exception as e:  # msgpack raises several unrelated types on garbage
            raise TrajectoryDecodeError(f"not a msgpack trajectory: {e}") from None
        if not isinstance(obj, dict) or obj.get("v") != FORMAT_VERSION:
            raise TrajectoryDecodeError(
                f"unsupported trajectory format {obj.get('v') if isinstance(obj, dict) else obj!r}"
            )
        try:
            return cls(
                prompt_ids=_unpack_array(obj, "prompt_ids"),
                completion_ids=_unpack_array(obj, "completion_ids"),
                behavior_logprobs=_unpack_array(obj, "behavior_logprobs"),
                loss_mask=_unpack_array(obj, "loss_mask"),
                reward=float(obj["reward"]),
                group_id=str(obj["group_id"]),
                policy_version=int(obj["policy_version"]),
                finish_reason=str(obj["finish_reason"]),
                reward_components={str(k): float(v) for k, v in dict(obj["reward_components"]).items()},
                info=dict(obj["info"]),
            )
        except TrajectoryDecodeError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise TrajectoryDecodeError(f"bad trajectory field: {e}") from None

    @property
    def num_completion_tokens(self) -> int:
        return int(len(self.completion_ids))


def _pack_array(a: np.ndarray) -> dict:
    return {"dtype": a.dtype.str, "shape": list(a.shape), "data": a.tobytes()}


def _unpack_array(obj: dict, name: str) -> np.ndarray:
    try:
        spec = obj[name]
        dtype = np.dtype(spec["dtype"])
        shape = tuple(int(s) for s in spec["shape"])
        data = spec["data"]
        if dtype.kind not in "iuf" or not isinstance(data, bytes):
            raise ValueError("unsupported dtype or data")
        if int(np.prod(shape)) * dtype.itemsize != len(data):
            raise ValueError(f"{len(data)} bytes do not fit shape {shape} of {dtype}")
        return np.frombuffer(data, dtype=dtype).reshape(shape).copy()
    except (KeyError, TypeError, ValueError) as e:
        raise TrajectoryDecodeError(f"Trajectory field {name!r}: {e}") from None
