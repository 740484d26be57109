"""The experts' own small configs: `PolicySpec` (what a saved expert is; travels in its config.json) and
`PPOConfig` (how `lazarus experts train` trains one). Every field says what it does and when to change it.

Defaults follow CleanRL's recurrent PPO recipe (ppo_atari_lstm.py / ppo.py); `PRESETS` holds the few
per-environment changes that the reference results in docs/experts.md were run with.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

ARCHES = ("gru", "lstm", "mlp")


class PolicySpec(BaseModel):
    """The shape of an expert's network; saved next to its weights so `load_expert` can rebuild it."""

    model_config = ConfigDict(extra="forbid")

    arch: Literal["gru", "lstm", "mlp"] = Field("gru", description="Core: gru, lstm (recurrent) or mlp (no memory).")
    obs_dim: int = Field(..., ge=1, description="Length of the (flat) observation vector.")
    action_kind: Literal["discrete", "continuous"] = Field(
        ..., description="discrete: categorical head over `action_dim` actions; continuous: tanh-squashed Gaussian."
    )
    action_dim: int = Field(..., ge=1, description="Number of actions (discrete) or action dimensions (continuous).")
    action_low: list[float] = Field(default_factory=list, description="Continuous only: lower bound per dimension.")
    action_high: list[float] = Field(default_factory=list, description="Continuous only: upper bound per dimension.")
    hidden_size: int = Field(64, ge=1, description="Width of the encoder, the core and the heads' input.")
    init_log_std: float = Field(0.0, description="Continuous only: initial log std of the pre-tanh Gaussian.")
    env: str = Field(..., description="Environment id the expert acts in (see lazarus.experts.envs.ENVS).")
    env_kwargs: dict = Field(default_factory=dict, description="Keyword arguments the environment is made with.")

    @model_validator(mode="after")
    def _bounds_match_actions(self) -> PolicySpec:
        if self.action_kind == "continuous":
            if len(self.action_low) != self.action_dim or len(self.action_high) != self.action_dim:
                raise ValueError(
                    f"action_low/action_high need {self.action_dim} entries each, got "
                    f"{len(self.action_low)}/{len(self.action_high)}"
                )
            if any(lo >= hi for lo, hi in zip(self.action_low, self.action_high)):
                raise ValueError(f"action_low {self.action_low} must be below action_high {self.action_high}")
        return self

    @property
    def state_size(self) -> int:
        """Width of the recurrent state carried between steps: h (gru), h and c (lstm), nothing (mlp)."""
        return {"gru": self.hidden_size, "lstm": 2 * self.hidden_size, "mlp": 0}[self.arch]


class PPOConfig(BaseModel):
    """Recurrent PPO with GAE on a batch of environments (one update per `num_envs * rollout_steps` env steps)."""

    model_config = ConfigDict(extra="forbid")

    env: str = Field("CartPole-v1", description="Environment id (lazarus.experts.envs.ENVS).")
    env_kwargs: dict = Field(default_factory=dict, description="Keyword arguments for the environment.")
    arch: Literal["gru", "lstm", "mlp"] = Field("gru", description="Policy core.")
    hidden_size: int = Field(64, ge=1, description="Width of the network.")
    init_log_std: float = Field(0.0, description="Continuous actions: initial log std of the pre-tanh Gaussian.")
    seed: int = Field(0, description="Seeds the network init, the action sampling and the environments.")
    total_steps: int = Field(300_000, ge=1, description="Env steps to train for (summed over the envs).")
    num_envs: int = Field(8, ge=1, description="Environments stepped together; the rollout policy runs batched.")
    rollout_steps: int = Field(128, ge=1, description="Steps per environment between two updates.")
    workers: int = Field(
        0, ge=0,
        description="Env workers that step the envs, each its contiguous share with the current policy (sent "
        "per rollout): 0 steps them all in this process. The rollouts are the same for any value (same seed); "
        "more workers pay off when env steps are costly and there are cores to spare.",
    )
    worker_launcher: Literal["process", "ray"] = Field(
        "process",
        description="What runs the env workers: `process` (spawned processes on this machine) or `ray` (Ray "
        "actors; `lazarus experts train --launcher ray`).",
    )
    chunk_length: int = Field(
        16, ge=1,
        description="Length of the sequences the update replays from their stored initial state (truncated "
        "BPTT). Must divide rollout_steps. Longer chunks let gradients reach further back; cost grows with it.",
    )
    num_minibatches: int = Field(4, ge=1, description="Minibatches per epoch (of whole chunks).")
    update_epochs: int = Field(4, ge=1, description="Passes over each rollout.")
    learning_rate: float = Field(2.5e-4, gt=0, description="Adam step size.")
    anneal_lr: bool = Field(True, description="Decay the learning rate linearly to 0 over total_steps.")
    gamma: float = Field(0.99, ge=0, le=1, description="Discount.")
    gae_lambda: float = Field(0.95, ge=0, le=1, description="GAE lambda.")
    clip_range: float = Field(0.2, gt=0, description="PPO ratio clip.")
    clip_range_value: float | None = Field(0.2, description="Value clip around the rollout's values (None: off).")
    entropy_coef: float = Field(0.01, ge=0, description="Entropy bonus weight.")
    value_coef: float = Field(0.5, ge=0, description="Value loss weight.")
    max_grad_norm: float = Field(0.5, gt=0, description="Global gradient-norm clip.")
    normalize_advantages: bool = Field(True, description="Whiten advantages per minibatch.")
    reward_scale: float = Field(1.0, gt=0, description="Rewards are multiplied by this for learning (not for logging).")
    eval_every: int = Field(10, ge=1, description="Evaluate the deterministic policy every this many updates.")
    eval_episodes: int = Field(20, ge=1, description="Episodes per evaluation during training.")
    stop_at_return: float | None = Field(
        None,
        description="Stop once an evaluation's mean return reaches this (None: run all total_steps). The saved "
        "expert is always the best-evaluated policy.",
    )

    @model_validator(mode="after")
    def _chunks_fit(self) -> PPOConfig:
        if self.rollout_steps % self.chunk_length:
            raise ValueError(f"chunk_length {self.chunk_length} must divide rollout_steps {self.rollout_steps}")
        if self.worker_launcher == "ray" and self.workers == 0:
            raise ValueError("worker_launcher ray runs the env workers as Ray actors: it needs workers >= 1")
        if self.workers > self.num_envs:
            raise ValueError(f"workers {self.workers} cannot exceed num_envs {self.num_envs} (each steps at least one)")
        chunks = self.num_envs * self.rollout_steps // self.chunk_length
        if chunks < self.num_minibatches:
            raise ValueError(f"{chunks} chunks per rollout cannot fill num_minibatches={self.num_minibatches}")
        return self


# Per-environment settings the reference results were produced with (`lazarus experts train` starts here).
PRESETS: dict[str, dict] = {
    "CartPole-v1": dict(total_steps=400_000, learning_rate=1e-3, stop_at_return=500.0),
    "CartPoleNoVel-v1": dict(total_steps=600_000, learning_rate=1e-3, chunk_length=32, stop_at_return=500.0),
    "Pendulum-v1": dict(
        total_steps=400_000, learning_rate=1e-3, gamma=0.9, entropy_coef=0.0, rollout_steps=256,
        chunk_length=32, num_minibatches=8, update_epochs=10, reward_scale=0.1, init_log_std=-0.5,
        clip_range_value=None, stop_at_return=-170.0,
    ),
    "Projectile-v0": dict(
        total_steps=200_000, learning_rate=1e-3, gamma=0.99, entropy_coef=0.0, rollout_steps=64, chunk_length=4,
        num_minibatches=4, update_epochs=10, init_log_std=-0.5, clip_range_value=None, stop_at_return=1.0,
    ),
}


def preset(env: str, **overrides) -> PPOConfig:
    """`PPOConfig` for `env` from its preset (if any) with `overrides` on top (a None sets the field to None)."""
    return PPOConfig(**{"env": env, **PRESETS.get(env, {}), **overrides})
