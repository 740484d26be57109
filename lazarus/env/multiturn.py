"""Multi-turn rollout at the token level: batched episodes of an `Engine` against an `Env`.

All episodes of a task advance together: each round makes one `generate` call over the episodes still
running (whatever turn each is in). A model turn runs to EOS (or the per-turn `task.max_tokens`); its text
goes to `env.step`; the observation is rendered once (`observation.continuation_ids`) and appended with
loss mask 0 and logprob 0. The next turn continues from those exact ids: from the engine's KV cache when
`Engine.generate` accepts `caches=` (only the new tokens are prefilled), else by re-prefilling the whole
history. An episode ends when the env says done, at `max_turns`, or at `max_total_tokens`.

The trajectory's reward is the run's reward functions on the final model turn's text (e.g. `accuracy`,
math-verify against the row's `answer`) plus the env's shaping rewards summed over the episode. Its info
also says where each env step's reward was earned and where episodes ended, for token-level credit (PPO):
`step_rewards` [[i, r], ...] (i: the completion index of the last model token of the turn the env scored)
and `episode_ends` [i, ...] (the turn where the env said done, or where it ended one episode and began the
next in the same conversation, `StepResult.info["episode_end"]`, e.g. a game of several rounds).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from lazarus.data.trajectory import RolloutTask, Trajectory
from lazarus.env.observation import continuation_ids, prompt_ids, truncate
from lazarus.env.protocol import Env
from lazarus.env.rewards import RewardFunction, score
from lazarus.inference.sampling import SamplingParams

log = logging.getLogger(__name__)


@dataclass
class Episode:
    prompt_index: int
    env: Env
    prompt_ids: list[int]
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    turns: int = 0
    env_reward: float = 0.0
    tool_calls: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    final_text: str = ""
    finish_reason: str = "stop"
    done: bool = False
    step_rewards: list[list] = field(default_factory=list)  # [completion index of the turn's last token, reward]
    episode_ends: list[int] = field(default_factory=list)  # completion indices where an episode ended
    cache: object = None
    cached_tokens: int = 0

    @property
    def history(self) -> list[int]:
        return self.prompt_ids + self.tokens

    def add(self, ids: list[int], logprobs: list[float] | None, is_model: bool) -> None:
        self.tokens += ids
        self.logprobs += logprobs if logprobs is not None else [0.0] * len(ids)
        self.mask += [1 if is_model else 0] * len(ids)


def supports_cache_reuse(engine) -> bool:
    """Whether `engine.generate` takes `caches=` and `keep_cache=` (the engine's KV-cache continuation)."""
    try:
        parameters = inspect.signature(engine.generate).parameters
    except (TypeError, ValueError):
        return False
    return "caches" in parameters and "keep_cache" in parameters


def run_episodes(engine, task: RolloutTask, reward_functions: list[RewardFunction], make_env: Callable[[], Env],
                 params: SamplingParams, *, max_turns: int, max_total_tokens: int, observation_max_tokens: int,
                 reuse_cache: bool | None = None) -> list[tuple[Episode, dict]]:
    """Run `task.group_size` episodes per prompt; returns (episode, reward info) prompt-major."""
    tokenizer = engine.tokenizer
    eos = set(engine.eos_token_ids)
    end_of_turn = min(eos) if eos else None
    reuse = supports_cache_reuse(engine) if reuse_cache is None else reuse_cache
    episodes = []
    for i, row in enumerate(task.rows):
        for _ in range(task.group_size):
            env = make_env()
            opening = env.reset(row)
            ids = prompt_ids(tokenizer, opening.messages, opening.tools) if opening.messages else list(task.prompts[i])
            episodes.append(Episode(i, env, ids))
    for turn in range(max_turns):
        running = [e for e in episodes if not e.done]
        if not running:
            break
        room = max(max_total_tokens - len(e.tokens) for e in running)
        turn_params = SamplingParams(**{**params.__dict__, "max_tokens": max(1, min(params.max_tokens, room)),
                                        "seed": None if params.seed is None else params.seed + 7919 * turn})
        completions = _generate(engine, running, turn_params, reuse)
        for e, c in zip(running, completions):
            token_ids, logprobs = list(c.token_ids), list(c.logprobs)
            budget = max_total_tokens - len(e.tokens)
            clipped = len(token_ids) > budget
            e.add(token_ids[:budget], logprobs[:budget], is_model=True)
            e.turns += 1
            e.final_text = c.text if not clipped else tokenizer.decode([t for t in token_ids[:budget] if t not in eos])
            if reuse:
                e.cache, e.cached_tokens = getattr(c, "cache", None), getattr(c, "cached_tokens", 0)
            if clipped or c.finish_reason == "length":
                e.done, e.finish_reason = True, "length"
                continue
            result = e.env.step(e.final_text)
            e.env_reward += float(result.reward)
            last = len(e.tokens) - 1  # the turn's last model token: where its step reward and episode end sit
            e.step_rewards.append([last, float(result.reward)])
            if result.done or result.info.get("episode_end"):
                e.episode_ends.append(last)
            e.tool_calls += int(result.info.get("tool_calls", 0))
            for kind, n in result.info.get("failures", {}).items():
                e.failures[kind] = e.failures.get(kind, 0) + n
            if result.done:
                e.done = True
                continue
            if turn == max_turns - 1:
                e.done, e.finish_reason = True, "max_turns"
                continue
            messages = [{**m, "content": truncate(str(m.get("content", "")), tokenizer, observation_max_tokens)}
                        for m in result.observation.messages]
            observation = continuation_ids(tokenizer, messages)
            if token_ids[-1:] and token_ids[-1] not in eos and end_of_turn is not None:
                observation = [end_of_turn] + observation  # a turn cut by a stop string: close it for the model
            if len(e.tokens) + len(observation) >= max_total_tokens:
                e.done, e.finish_reason = True, "length"
                continue
            e.add(observation, None, is_model=False)
        for e in running:
            if e.done:
                e.cache = None  # a finished episode's KV cache is not needed again
    for e in episodes:
        if not e.done:
            e.done, e.finish_reason = True, "max_turns"
    rows = [task.rows[e.prompt_index] for e in episodes]
    total, components = score(reward_functions, [r.get("prompt") for r in rows], [e.final_text for e in episodes],
                              [e.tokens for e in episodes], rows)
    out = []
    for k, e in enumerate(episodes):
        parts = {name: float(v[k]) for name, v in components.items()}
        parts["env"] = e.env_reward
        out.append((e, {"reward": float(total[k]) + e.env_reward, "components": parts}))
    return out


def _generate(engine, running: list[Episode], params: SamplingParams, reuse: bool):
    """One batched generate call over the running episodes (from their KV caches when reusing)."""
    if reuse and all(e.cache is not None for e in running):
        suffixes = [e.history[e.cached_tokens:] for e in running]
        return engine.generate(suffixes, 1, params, caches=[e.cache for e in running], keep_cache=True)
    if reuse:
        return engine.generate([e.history for e in running], 1, params, keep_cache=True)
    return engine.generate([e.history for e in running], 1, params)


def trajectories_of(results: list[tuple[Episode, dict]], task: RolloutTask, *, policy_version: int, actor_id: str,
                    end_version: int) -> list[Trajectory]:
    """Episodes as `Trajectory` records (info: turns, tool_calls, failed_calls, failures by kind, step_rewards,
    episode_ends)."""
    trajectories = []
    for e, reward in results:
        info = {"turns": e.turns, "tool_calls": e.tool_calls, "failed_calls": sum(e.failures.values()),
                "failures": dict(e.failures), "step_rewards": e.step_rewards, "episode_ends": e.episode_ends}
        trajectories.append(Trajectory(
            prompt_ids=e.prompt_ids, completion_ids=np.array(e.tokens, np.int32),
            behavior_logprobs=np.array(e.logprobs, np.float32), loss_mask=np.array(e.mask, np.int8),
            reward=reward["reward"], group_id=task.group_ids[e.prompt_index], task_id=task.task_id,
            actor_id=actor_id, sampling=task.sampling, policy_version=policy_version, policy_version_end=end_version,
            finish_reason=e.finish_reason, reward_components=reward["components"], info=info))
    return trajectories
