"""Running an expert: deterministic evaluation over episodes, and one episode on a given task.

`run_expert(name_or_dir, task)` is what a tool calls: it resets the expert's env with `options=task`
(for Projectile-v0, `{"target_distance": 37, "wind": -2}`), runs the expert's deterministic policy to
the end of the episode, and returns a JSON-ready dict of what happened.
"""

from __future__ import annotations

import numpy as np

from lazarus.experts.envs import make_env
from lazarus.experts.policy import RolloutPolicy


def evaluate(policy: RolloutPolicy, episodes: int, seed: int = 10_000, deterministic: bool = True) -> list[float]:
    """Returns of `episodes` episodes of the policy's env, run side by side (one env each), seeds seed..seed+n-1.

    deterministic: act with the mode of the policy (argmax, or tanh of the Gaussian mean).
    """
    spec = policy.spec
    envs = [make_env(spec.env, **spec.env_kwargs) for _ in range(episodes)]
    obs = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(envs)]).astype(np.float32)
    state, starts = policy.initial_state(episodes), np.ones(episodes, np.float32)
    returns, running = np.zeros(episodes), np.ones(episodes, bool)
    rng = None if deterministic else np.random.default_rng(seed)
    while running.any():
        head, _, state = policy.step(obs, starts, state)
        _, env_actions, _ = policy.act(head, None if rng is None else policy.draw_noise(rng, episodes))
        starts = np.zeros(episodes, np.float32)
        for i in np.flatnonzero(running):
            observation, reward, terminated, truncated, _ = envs[i].step(env_actions[i])
            returns[i] += reward
            obs[i] = observation
            running[i] = not (terminated or truncated)
    for env in envs:
        env.close()
    return returns.tolist()


def run_episode(policy: RolloutPolicy, task: dict | None = None, seed: int = 0, max_steps: int = 10_000) -> dict:
    """One deterministic episode of the policy's env reset with `options=task`: return, steps, every
    step's env action, reward and info, and `outcome` (the last step's info)."""
    spec = policy.spec
    env = make_env(spec.env, **spec.env_kwargs)
    observation, _ = env.reset(seed=seed, options=task or None)
    state, starts = policy.initial_state(1), np.ones(1, np.float32)
    steps, total = [], 0.0
    for _ in range(max_steps):
        head, _, state = policy.step(np.asarray(observation, np.float32)[None], starts, state)
        _, env_actions, _ = policy.act(head, None)
        starts = np.zeros(1, np.float32)
        action = env_actions[0]
        observation, reward, terminated, truncated, info = env.step(action)
        total += float(reward)
        steps.append({"action": np.asarray(action).tolist(), "reward": float(reward), "info": _plain(info)})
        if terminated or truncated:
            break
    env.close()
    return {
        "env": spec.env, "task": dict(task or {}), "return": total, "steps": len(steps),
        "outcome": steps[-1]["info"] if steps else {}, "trace": steps,
    }


def run_expert(name_or_dir: str, task: dict | None = None, seed: int = 0) -> dict:
    """Load an expert (directory, `NAME` or `NAME@vN`) and run one deterministic episode on `task`.

    The result adds `expert` (the resolved directory) to `run_episode`'s dict. Errors a caller can fix
    (unknown expert, a task outside the env's schema) are `LazarusError`s naming the field.
    """
    from lazarus.experts.registry import load_expert, resolve

    policy, _ = load_expert(name_or_dir)
    result = run_episode(RolloutPolicy(policy), task, seed=seed)
    return {"expert": str(resolve(name_or_dir)), **result}


def _plain(info: dict) -> dict:
    """An env info dict with numpy scalars and arrays made JSON-ready."""
    out = {}
    for key, value in info.items():
        if isinstance(value, np.generic):
            value = value.item()
        elif isinstance(value, np.ndarray):
            value = value.tolist()
        out[key] = value
    return out
