"""Expert rollouts, in this process or in env workers: the envs cut into contiguous shards, each stepped by
its own worker with the current policy, since env steps are CPU-bound Python.

`RolloutCollector` steps an `EnvBatch` with a `RolloutPolicy` (the numpy twin) and carries observations and
recurrent state from one rollout to the next. `EnvShard` is that collector over envs [start, end) of the N:
the one worker function every launcher runs. `EnvWorkers` is the trainer's side: it draws the rollout's
action noise for all N envs from the one generator (seeded by `PPOConfig.seed`), sends each shard the
policy's weights and its slice of the noise, and joins the shards' rollouts along the env axis. Env i is
seeded seed + i wherever it runs, so the joined rollout equals the single-process one, bit for bit
(tested), whatever the number of workers.

Shards open in this process (`workers: 0`, `LocalShard`), in spawned processes (`ProcessShard`, one
single-worker executor each, so the shard's state stays in its process), or as Ray actors (`lazarus.runtime.
ray_launcher.ray_env_workers`, which runs the same `EnvShard`). A shard handle has `collect(...) -> Future`
and `close()`.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import numpy as np

from lazarus.errors import LazarusError
from lazarus.experts.config import PolicySpec, PPOConfig
from lazarus.experts.envs import EnvBatch
from lazarus.experts.policy import RolloutPolicy

COLLECT_TIMEOUT_S = 900.0  # one rollout of one shard; far above any preset's (seconds), so a hung worker ends


class EnvWorkerError(LazarusError):
    """An env worker died, timed out or failed; the message names the worker and its envs."""


@dataclass
class Rollout:
    """T steps of N envs; every array is [T, N, ...]. `states[t]` is the state before step t's start mask."""

    obs: np.ndarray
    starts: np.ndarray
    states: np.ndarray
    actions: np.ndarray
    logprobs: np.ndarray
    values: np.ndarray
    rewards: np.ndarray
    ended: np.ndarray
    bootstraps: np.ndarray  # gamma * V(last observation) on the last step of a truncated episode, else 0
    last_values: np.ndarray  # [N]: V of the observation after the last step (for the GAE bootstrap)
    finished: list[list[tuple[float, int]]]  # per step: (return, length) of the episodes that ended, env order


class RolloutCollector:
    """Steps an `EnvBatch` with a `RolloutPolicy`, carrying observations and recurrent state across rollouts.

    It takes the rollout's action noise as an argument (`RolloutPolicy.draw_noise`) rather than owning a
    generator, so that envs split over env workers (lazarus.experts.workers) sample what one process would."""

    def __init__(self, envs: EnvBatch, spec: PolicySpec):
        self.envs = envs
        self.obs, self.starts = envs.reset()
        self.state = np.zeros((envs.num_envs, spec.state_size), np.float32)

    def collect(self, policy: RolloutPolicy, steps: int, gamma: float, noise: np.ndarray) -> Rollout:
        """`steps` steps of every env; `noise` [steps, N, ...] is the randomness of the sampled actions."""
        n, spec = self.envs.num_envs, policy.spec
        action_shape = () if spec.action_kind == "discrete" else (spec.action_dim,)
        buffers = dict(
            obs=np.zeros((steps, n, spec.obs_dim), np.float32), starts=np.zeros((steps, n), np.float32),
            states=np.zeros((steps, n, spec.state_size), np.float32),
            actions=np.zeros((steps, n, *action_shape), np.int64 if not action_shape else np.float32),
            logprobs=np.zeros((steps, n), np.float32), values=np.zeros((steps, n), np.float32),
            rewards=np.zeros((steps, n), np.float32), ended=np.zeros((steps, n), np.float32),
            bootstraps=np.zeros((steps, n), np.float32),
        )
        finished_per_step = []
        for t in range(steps):
            buffers["obs"][t], buffers["starts"][t], buffers["states"][t] = self.obs, self.starts, self.state
            head, values, self.state = policy.step(self.obs, self.starts, self.state)
            actions, env_actions, logprobs = policy.act(head, noise[t])
            self.obs, rewards, terminated, truncated, final_obs, finished = self.envs.step(env_actions)
            for i, last in enumerate(final_obs):
                if last is not None:  # time limit: bootstrap from the value of where the episode stopped
                    _, last_value, _ = policy.step(last[None], np.zeros(1, np.float32), self.state[i : i + 1])
                    buffers["bootstraps"][t, i] = gamma * last_value[0]
            self.starts = (terminated | truncated).astype(np.float32)
            buffers["actions"][t], buffers["logprobs"][t], buffers["values"][t] = actions, logprobs, values
            buffers["rewards"][t], buffers["ended"][t] = rewards, self.starts
            finished_per_step.append(finished)
        _, last_values, _ = policy.step(self.obs, self.starts, self.state)
        return Rollout(**buffers, last_values=last_values, finished=finished_per_step)


class EnvShard:
    """Envs [start, end) of the N, with their carried state: what one env worker holds and steps."""

    def __init__(self, env: str, env_kwargs: dict, spec: dict, start: int, end: int, seed: int):
        self.spec = PolicySpec(**spec)
        self.collector = RolloutCollector(EnvBatch(env, end - start, seed + start, env_kwargs), self.spec)

    def collect(self, weights: dict[str, np.ndarray], steps: int, gamma: float, noise: np.ndarray) -> Rollout:
        return self.collector.collect(RolloutPolicy(spec=self.spec, weights=weights), steps, gamma, noise)

    def close(self) -> None:
        self.collector.envs.close()


class LocalShard:
    """A shard stepped in this process (`workers: 0`): `collect` runs at once and returns a done Future."""

    def __init__(self, *args):
        self.shard = EnvShard(*args)

    def collect(self, *args) -> Future:
        future = Future()
        future.set_result(self.shard.collect(*args))
        return future

    def close(self) -> None:
        self.shard.close()


_PROCESS_SHARD: EnvShard | None = None  # the shard an env worker process holds


def _open_in_worker(*args) -> int:
    global _PROCESS_SHARD
    _PROCESS_SHARD = EnvShard(*args)
    return os.getpid()


def _collect_in_worker(*args) -> Rollout:
    return _PROCESS_SHARD.collect(*args)


class ProcessShard:
    """A shard in its own spawned process (a one-worker executor: every call reaches the process holding it)."""

    def __init__(self, *args):
        self.executor = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        self.pid = self.executor.submit(_open_in_worker, *args).result(timeout=COLLECT_TIMEOUT_S)

    def collect(self, *args) -> Future:
        try:
            return self.executor.submit(_collect_in_worker, *args)
        except BrokenProcessPool as error:  # the pool saw the death first: the same error, at result()
            future = Future()
            future.set_exception(error)
            return future

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


def join_envs(parts: list[Rollout]) -> Rollout:
    """Shards' rollouts (envs in order) as one: arrays joined on the env axis, episodes per step in env order."""
    if len(parts) == 1:
        return parts[0]
    arrays = {name: np.concatenate([getattr(p, name) for p in parts], axis=0 if name == "last_values" else 1)
              for name in Rollout.__dataclass_fields__ if name != "finished"}
    finished = [[episode for p in parts for episode in p.finished[t]] for t in range(len(parts[0].finished))]
    return Rollout(**arrays, finished=finished)


class EnvWorkers:
    """The trainer's side of the rollout: N envs over `config.workers` shards (in-process with 0)."""

    def __init__(self, config: PPOConfig, spec: PolicySpec, open_shard: Callable[..., object] | None = None):
        if open_shard is None:
            if config.workers == 0:
                open_shard = LocalShard
            elif config.worker_launcher == "process":
                open_shard = ProcessShard
            else:
                raise EnvWorkerError("worker_launcher: ray runs env workers as Ray actors, which the Ray launcher "
                                     "opens: use `lazarus experts train --launcher ray`")
        self.rng = np.random.default_rng(config.seed)
        self.num_envs = config.num_envs
        from lazarus.env.pool import slices  # contiguous near-equal ranges, as the scoring pool cuts its batches

        self.ranges = slices(config.num_envs, max(1, config.workers))
        self.shards = []
        try:
            for start, end in self.ranges:
                self.shards.append(open_shard(config.env, config.env_kwargs, spec.model_dump(), start, end,
                                              config.seed))
        except Exception:
            self.close()
            raise

    def collect(self, policy: RolloutPolicy, steps: int, gamma: float) -> Rollout:
        """One rollout of every env: each shard gets the policy's weights and its slice of the action noise."""
        noise = policy.draw_noise(self.rng, steps, self.num_envs)
        futures = [shard.collect(policy.weights, steps, gamma, noise[:, start:end])
                   for shard, (start, end) in zip(self.shards, self.ranges)]
        parts = []
        for k, (future, (start, end)) in enumerate(zip(futures, self.ranges)):
            try:
                parts.append(future.result(timeout=COLLECT_TIMEOUT_S))
            except LazarusError:
                raise
            except TimeoutError:
                raise EnvWorkerError(f"env worker {k} (envs {start}-{end - 1}) sent no rollout within "
                                     f"{COLLECT_TIMEOUT_S:.0f}s") from None
            except BrokenProcessPool:
                raise EnvWorkerError(f"env worker {k} (envs {start}-{end - 1}) died during the rollout") from None
            except Exception as error:
                raise EnvWorkerError(f"env worker {k} (envs {start}-{end - 1}) failed: "
                                     f"{type(error).__name__}: {error}") from None
        return join_envs(parts)

    def close(self) -> None:
        for shard in self.shards:
            try:
                shard.close()
            except Exception:  # noqa: BLE001  (a dead worker has nothing left to close)
                pass
        self.shards = []
