"""Rollout: episodes of an `Engine` against the task's scoring, as `Trajectory` records.

`rollout(engine, task, reward_functions, ...)` generates `task.group_size` completions for every prompt
of a `RolloutTask` in one batched call, scores them with the reward functions (TRL's signature), and
returns one trajectory per completion, tagged with the task, the actor, the sampling settings and the
policy versions at the start and end of generation. It knows nothing of processes or transports: the
local launcher, `lazarus-actor` and the Ray actors all call this same function.
"""

from __future__ import annotations

from collections.abc import Callable

from lazarus.data.trajectory import RolloutTask, Trajectory
from lazarus.env.rewards import RewardFunction, score
from lazarus.inference.engine import Engine
from lazarus.inference.sampling import SamplingParams


def sampling_params(task: RolloutTask, stop: list[str] | None = None) -> SamplingParams:
    s = task.sampling
    return SamplingParams(temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, min_p=s.min_p,
                          max_tokens=task.max_tokens, stop=list(stop or []), seed=task.seed)


def rollout(engine: Engine, task: RolloutTask, reward_functions: list[RewardFunction], *,
            policy_version: int, actor_id: str = "local", stop: list[str] | None = None,
            current_version: Callable[[], int] | None = None, scorer: Callable = score) -> list[Trajectory]:
    """`task.group_size` scored completions per prompt of `task`, prompt-major.

    `policy_version` is the version of the weights the engine holds; `current_version()` (when given) is
    asked after generation for the learner's version then, recorded as `policy_version_end`. `scorer` has
    the signature of `rewards.score` (e.g. `env.pool.PooledScorer` for `runtime.env_workers`).
    """
    completions = engine.generate(task.prompts, task.group_size, sampling_params(task, stop))
    rows = [task.rows[c.prompt_index] for c in completions]
    total, components = scorer(reward_functions, [r.get("prompt") for r in rows], [c.text for c in completions],
                               [c.token_ids for c in completions], rows)
    end_version = max(policy_version, current_version()) if current_version is not None else policy_version
    return [
        Trajectory(prompt_ids=task.prompts[c.prompt_index], completion_ids=c.token_ids,
                   behavior_logprobs=c.logprobs, loss_mask=None, reward=float(total[k]),
                   group_id=task.group_ids[c.prompt_index], task_id=task.task_id, actor_id=actor_id,
                   sampling=task.sampling, policy_version=policy_version, policy_version_end=end_version,
                   finish_reason=c.finish_reason,
                   reward_components={name: float(v[k]) for name, v in components.items()})
        for k, c in enumerate(completions)
    ]
