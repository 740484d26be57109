"""The control tasks experts train on, and `EnvBatch`: N Gymnasium envs stepped together.

ENVS: CartPole-v1 and Pendulum-v1 (Gymnasium's own), CartPoleNoVel-v1 (CartPole observing only the cart
position and pole angle: the velocities must be inferred from memory), Projectile-v0 (lazarus.experts.
projectile, aiming under drag and wind).

`EnvBatch` resets an env in the same step its episode ends (the returned observation is then the new
episode's first, with `starts` set), which is what a recurrent policy's start flags need; the last
observation of a truncated episode is kept so the trainer can bootstrap from its value.
"""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import numpy as np

from lazarus.errors import LazarusError


class UnknownEnvError(LazarusError, ValueError):
    """An environment id that `ENVS` does not know; the message lists the ones it does."""


class NoVelocityObservation(gym.ObservationWrapper):
    """CartPole observing [cart position, pole angle] only: a partially observed task that needs memory."""

    KEEP = (0, 2)

    def __init__(self, env: gym.Env):
        super().__init__(env)
        low, high = env.observation_space.low[list(self.KEEP)], env.observation_space.high[list(self.KEEP)]
        self.observation_space = gym.spaces.Box(low, high, dtype=np.float32)

    def observation(self, observation):
        return np.asarray(observation, np.float32)[list(self.KEEP)]


def _projectile(**kwargs) -> gym.Env:
    from lazarus.experts.projectile import ProjectileEnv

    return ProjectileEnv(**kwargs)


ENVS: dict[str, Callable[..., gym.Env]] = {
    "CartPole-v1": lambda **kw: gym.make("CartPole-v1", disable_env_checker=True, **kw),
    "Pendulum-v1": lambda **kw: gym.make("Pendulum-v1", disable_env_checker=True, **kw),
    "CartPoleNoVel-v1": lambda **kw: NoVelocityObservation(gym.make("CartPole-v1", disable_env_checker=True, **kw)),
    "Projectile-v0": _projectile,
}


def make_env(name: str, **kwargs) -> gym.Env:
    if name not in ENVS:
        raise UnknownEnvError(f"unknown env {name!r}; known: {', '.join(ENVS)}")
    return ENVS[name](**kwargs)


def task_schema(name: str) -> dict:
    """JSON schema of the task `run_expert` passes to `reset(options=...)` (what a tool's arguments map to)."""
    if name == "Projectile-v0":
        from lazarus.experts.projectile import TASK_SCHEMA

        return TASK_SCHEMA
    if name not in ENVS:
        raise UnknownEnvError(f"unknown env {name!r}; known: {', '.join(ENVS)}")
    return {"type": "object", "properties": {}}  # Gymnasium's own envs take no task: a seed picks the start


def describe_spaces(env: gym.Env) -> dict:
    """The PolicySpec fields an env fixes: obs_dim, action_kind, action_dim and (continuous) the bounds."""
    obs_space, action_space = env.observation_space, env.action_space
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        raise UnknownEnvError(f"experts need a flat Box observation, got {obs_space}")
    if isinstance(action_space, gym.spaces.Discrete):
        return dict(obs_dim=obs_space.shape[0], action_kind="discrete", action_dim=int(action_space.n))
    if isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
        return dict(
            obs_dim=obs_space.shape[0], action_kind="continuous", action_dim=action_space.shape[0],
            action_low=[float(x) for x in action_space.low], action_high=[float(x) for x in action_space.high],
        )
    raise UnknownEnvError(f"experts need a Discrete or flat Box action space, got {action_space}")


class EnvBatch:
    """N copies of one env, stepped in a loop, reset in the step their episode ends."""

    def __init__(self, name: str, num_envs: int, seed: int, env_kwargs: dict | None = None):
        self.envs = [make_env(name, **(env_kwargs or {})) for _ in range(num_envs)]
        self.num_envs, self._seed = num_envs, seed
        self.episode_returns = np.zeros(num_envs)
        self.episode_lengths = np.zeros(num_envs, np.int64)

    def reset(self) -> tuple[np.ndarray, np.ndarray]:
        """First observations [N, obs_dim] and start flags (all 1)."""
        obs = [env.reset(seed=self._seed + i)[0] for i, env in enumerate(self.envs)]
        self.episode_returns[:] = 0
        self.episode_lengths[:] = 0
        return np.stack(obs).astype(np.float32), np.ones(self.num_envs, np.float32)

    def step(self, actions: np.ndarray):
        """-> (obs, rewards, terminated, truncated, final_obs, finished): `obs` are next observations (a
        new episode's first where one ended); `final_obs[i]` is the last observation of env i's truncated
        episode (else None); `finished` lists (return, length) of the episodes that ended."""
        obs, final_obs, finished = [], [None] * self.num_envs, []
        rewards = np.zeros(self.num_envs, np.float32)
        terminated = np.zeros(self.num_envs, bool)
        truncated = np.zeros(self.num_envs, bool)
        for i, env in enumerate(self.envs):
            observation, reward, term, trunc, _ = env.step(actions[i])
            rewards[i], terminated[i], truncated[i] = reward, term, trunc
            self.episode_returns[i] += reward
            self.episode_lengths[i] += 1
            if term or trunc:
                finished.append((float(self.episode_returns[i]), int(self.episode_lengths[i])))
                self.episode_returns[i], self.episode_lengths[i] = 0.0, 0
                if trunc and not term:
                    final_obs[i] = np.asarray(observation, np.float32)
                observation, _ = env.reset()
            obs.append(observation)
        return np.stack(obs).astype(np.float32), rewards, terminated, truncated, final_obs, finished

    def close(self) -> None:
        for env in self.envs:
            env.close()
