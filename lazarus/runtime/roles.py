"""The rollout actor role: an inference copy of the policy that samples and scores tasks.

`RolloutActor` knows nothing of processes or networks. It is given a `WeightSource` (the learner's own
model object in one process, the parameter server over gRPC elsewhere) and pulls from it only between
tasks, never in the middle of a batch. Generation always runs in eval mode (dropout off), so the
behaviour logprobs are exactly what the learner recomputes on-policy.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import mlx.nn as nn

from lazarus.data.trajectory import RolloutTask, Trajectory
from lazarus.env.rewards import RewardFunction, score
from lazarus.env.rollout import rollout
from lazarus.inference.engine import Engine
from lazarus.models.lora import AUTO_MERGE_MAX_BYTES, adapters_merged


class WeightSource(Protocol):
    def latest_version(self) -> int:
        """The newest policy version this source can give (cheap)."""

    def pull(self, model: nn.Module, have_version: int) -> tuple[int, int] | None:
        """Load a newer version into `model` if there is one: (version, bytes moved), else None."""


class SharedWeights:
    """In one process the actor samples with the learner's own model object: nothing to copy."""

    def __init__(self, version: Callable[[], int]):
        self._version = version

    def latest_version(self) -> int:
        return self._version()

    def pull(self, model: nn.Module, have_version: int) -> tuple[int, int] | None:
        version = self._version()
        return (version, 0) if version > have_version else None


@dataclass
class ActorStats:
    """What an actor reports in its heartbeats (and the learner logs per step)."""

    tokens: int = 0
    generation_s: float = 0.0
    weight_sync_s: float = 0.0
    weight_sync_bytes: int = 0
    weight_syncs: int = 0
    wait_for_weights_s: float = 0.0
    tasks: int = 0
    last: dict[str, float] = field(default_factory=dict)

    def as_heartbeat(self) -> dict[str, float]:
        return {"tokens_per_s": self.tokens / self.generation_s if self.generation_s else 0.0,
                "tokens": float(self.tokens), "tasks": float(self.tasks),
                "weight_sync_ms": 1000 * self.weight_sync_s / max(self.weight_syncs, 1),
                "weight_sync_bytes": float(self.last.get("weight_sync_bytes", 0.0)),
                "wait_for_weights_s": self.wait_for_weights_s}


class RolloutActor:
    """Samples `task.group_size` completions per prompt with the newest weights it has, and scores them."""

    def __init__(self, actor_id: str, model: nn.Module, tokenizer, reward_functions: list[RewardFunction],
                 weights: WeightSource, *, stop: list[str] | None = None, completion_batch_size: int = 64,
                 version: int = -1, scorer: Callable = score, merge_adapters: bool | str = "auto"):
        """`scorer` has `env.rewards.score`'s signature: a `PooledScorer` runs the reward functions in a pool
        of env workers (`runtime.env_workers`) instead of this process. `merge_adapters` (`lora.
        merge_for_sampling`): sample with LoRA layers merged into their weights (`models.lora.adapters_merged`);
        "auto" only when the merged weights take at most `AUTO_MERGE_MAX_BYTES`."""
        self.actor_id = actor_id
        self.model = model
        self.tokenizer = tokenizer
        self.reward_functions = reward_functions
        self.weights = weights
        self.stop = list(stop or [])
        self.engine = Engine(model, tokenizer, completion_batch_size=completion_batch_size)
        self.version = version
        self.scorer = scorer
        self.merge_adapters = merge_adapters
        self.stats = ActorStats()

    def sync_weights(self, at_least: int = -1) -> None:
        """Pull the newest weights if the source has newer ones (call between tasks only)."""
        t0 = time.perf_counter()
        pulled = self.weights.pull(self.model, self.version)
        if pulled is not None:
            self.version, nbytes = pulled
            self.stats.weight_sync_s += time.perf_counter() - t0
            self.stats.weight_sync_bytes += nbytes
            self.stats.weight_syncs += 1
            self.stats.last["weight_sync_bytes"] = float(nbytes)
        if self.version < at_least:
            raise RuntimeError(f"actor {self.actor_id}: weights at version {self.version}, task needs {at_least}")

    def _sampling_weights(self):
        """The block sampling runs in: adapters merged into their weights (`merge_adapters`), or as they are."""
        if not self.merge_adapters:
            return contextlib.nullcontext()
        return adapters_merged(self.model, None if self.merge_adapters is True else AUTO_MERGE_MAX_BYTES)

    def run_task(self, task: RolloutTask) -> list[Trajectory]:
        """Sample and score one task with the weights held now; eval mode (dropout off) throughout."""
        training = self.model.training
        self.model.eval()
        t0 = time.perf_counter()
        try:
            with self._sampling_weights():
                trajectories = rollout(self.engine, task, self.reward_functions, policy_version=self.version,
                                       actor_id=self.actor_id, stop=self.stop,
                                       current_version=self.weights.latest_version, scorer=self.scorer)
        finally:
            self.model.train(training)
        elapsed = time.perf_counter() - t0
        tokens = sum(t.num_model_tokens for t in trajectories)
        self.stats.tokens += tokens
        self.stats.generation_s += elapsed
        self.stats.tasks += 1
        self.stats.last.update(generation_s=elapsed, tokens=float(tokens))
        return trajectories


def env_worker_scorer(workers: int, pool: Callable[[int], Callable] | None = None) -> Callable:
    """`runtime.env_workers`: the reward functions in N worker processes (or the launcher's `pool`), else here."""
    if workers <= 0:
        return score
    if pool is not None:
        return pool(workers)
    from lazarus.env.pool import PooledScorer, process_pool

    return PooledScorer(process_pool(workers), workers)
