"""Recurrent PPO with GAE for experts on a batch of Gymnasium envs (the recipe of CleanRL's ppo_atari_lstm).

One update:
  1. rollout: step N envs for T steps with the numpy twin of the policy, storing per step the observation,
     the start flag, the recurrent state before the step, the action, its log-prob and the value;
  2. GAE over each env's steps (episode ends cut the recursion; a truncated episode's last reward is
     bootstrapped with gamma * V(last observation), so time limits are not mistaken for failures);
  3. the rollout is cut into chunks of `chunk_length` steps; each chunk keeps the state stored at its first
     step, and the update replays it from there with MLX (so on-policy the ratio is exactly 1), for
     `update_epochs` passes over shuffled minibatches of chunks, with the clipped surrogate, the clipped
     value loss and an entropy bonus (lazarus.algorithms.ppo).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np

from lazarus.algorithms.ppo import approx_kl, ppo_policy_loss, value_loss
from lazarus.experts.config import PolicySpec, PPOConfig
from lazarus.experts.envs import describe_spaces, make_env
from lazarus.experts.episodes import evaluate
from lazarus.experts.policy import ExpertPolicy, RolloutPolicy
from lazarus.experts.workers import EnvWorkers, Rollout, RolloutCollector  # noqa: F401  (RolloutCollector: re-exported)

TRAIN_EVAL_SEED = 1_000_000


def episode_gae(
    rewards: np.ndarray, values: np.ndarray, ended: np.ndarray, last_values: np.ndarray, gamma: float, lam: float
) -> tuple[np.ndarray, np.ndarray]:
    """GAE over [T, N] env steps: (advantages, returns).

        delta_t = r_t + gamma * V_{t+1} * (1 - ended_t) - V_t
        A_t     = delta_t + gamma * lam * (1 - ended_t) * A_{t+1},     R_t = A_t + V_t

    V_T is `last_values`; `ended_t` = 1 where the episode ended at step t.
    """
    advantages = np.zeros_like(rewards)
    next_value, next_advantage = last_values, np.zeros_like(last_values)
    for t in reversed(range(rewards.shape[0])):
        keep = 1.0 - ended[t]
        delta = rewards[t] + gamma * next_value * keep - values[t]
        next_advantage = advantages[t] = delta + gamma * lam * keep * next_advantage
        next_value = values[t]
    return advantages, advantages + values


def chunk(rollout: Rollout, advantages: np.ndarray, returns: np.ndarray, length: int) -> dict[str, mx.array]:
    """Cut [T, N] into [N * T / length, length] sequences; `state0` is each chunk's stored initial state."""
    steps, n = rollout.rewards.shape

    def sequences(x: np.ndarray) -> mx.array:  # [T, N, ...] -> [N * C, L, ...], env-major
        x = np.swapaxes(x, 0, 1)
        return mx.array(x.reshape(n * (steps // length), length, *x.shape[2:]))

    state0 = np.swapaxes(rollout.states[::length], 0, 1).reshape(n * (steps // length), -1)
    return dict(
        obs=sequences(rollout.obs), starts=sequences(rollout.starts), state0=mx.array(state0),
        actions=sequences(rollout.actions), logprobs=sequences(rollout.logprobs),
        values=sequences(rollout.values), advantages=sequences(advantages), returns=sequences(returns),
    )


def replay_logprobs(policy: ExpertPolicy, batch: dict[str, mx.array]) -> tuple[mx.array, mx.array, mx.array]:
    """(log pi(actions), entropy, values), each [B, L], recomputed by replaying each chunk from its state0."""
    head, values, _ = policy(batch["obs"], batch["starts"], batch["state0"])
    logprobs, entropy = policy.logprob_entropy(head, batch["actions"])
    return logprobs, entropy, values


def ppo_loss(policy: ExpertPolicy, batch: dict[str, mx.array], config: PPOConfig):
    logprobs, entropy, values = replay_logprobs(policy, batch)
    mask = mx.ones(logprobs.shape)
    advantages = batch["advantages"]
    if config.normalize_advantages:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    policy_loss, metrics = ppo_policy_loss(logprobs, batch["logprobs"], advantages, mask, config.clip_range)
    if config.clip_range_value is None:
        # Written out rather than value_loss(..., None): its all-zero clip metric trips mx.compile (MLX 0.32).
        value_error = mx.square(values - batch["returns"]).mean()
        critic_loss, value_metrics = 0.5 * value_error, {"value_error": mx.stop_gradient(value_error)}
    else:
        critic_loss, value_metrics = value_loss(
            values, batch["values"], batch["returns"], mask, config.clip_range_value
        )
    entropy_mean = entropy.mean()
    loss = policy_loss + config.value_coef * critic_loss - config.entropy_coef * entropy_mean
    return loss, {
        "policy_loss": policy_loss, "value_loss": critic_loss, "entropy": entropy_mean,
        "approx_kl": approx_kl(logprobs, batch["logprobs"], mask), "clip_fraction": metrics["clip_fraction"],
        "value_error": value_metrics["value_error"],
    }


def policy_spec(config: PPOConfig) -> PolicySpec:
    env = make_env(config.env, **config.env_kwargs)
    spaces = describe_spaces(env)
    env.close()
    return PolicySpec(
        arch=config.arch, hidden_size=config.hidden_size, init_log_std=config.init_log_std, env=config.env,
        env_kwargs=config.env_kwargs, **spaces,
    )


def train(
    config: PPOConfig,
    on_update: Callable[[int, dict], None] | None = None,
    on_eval: Callable[[ExpertPolicy, int, dict], None] | None = None,
    open_shard: Callable[..., object] | None = None,
) -> ExpertPolicy:
    """Train an expert; returns the final policy. The loop calls `on_update(env_steps, metrics)` after every
    update and `on_eval(policy, env_steps, metrics)` after every evaluation (the CLI logs and saves there).
    Stops after `total_steps` env steps, or at the first evaluation whose mean reaches `stop_at_return`.

    The envs are stepped in this process, or with `config.workers` > 0 in that many env workers
    (lazarus.experts.workers): processes, or what `open_shard` opens (the Ray launcher's actors); the
    rollouts, and so the trained policy, are the same either way."""
    mx.random.seed(config.seed)
    policy = ExpertPolicy(policy_spec(config))
    mx.eval(policy.parameters())
    optimizer = optim.Adam(learning_rate=config.learning_rate, eps=1e-5)
    optimizer.init(policy.trainable_parameters())
    loss_and_grad = nn.value_and_grad(policy, lambda p, batch: ppo_loss(p, batch, config))

    def update_step(minibatch: dict[str, mx.array]):
        (_, metrics), grads = loss_and_grad(policy, minibatch)
        grads, grad_norm = optim.clip_grad_norm(grads, config.max_grad_norm)
        optimizer.update(policy, grads)
        return {**metrics, "grad_norm": grad_norm}

    # Compiled once: every minibatch has the same shape. Halves the update's time on CPU (fewer op launches).
    model_state = [policy.state, optimizer.state]
    update_step = mx.compile(update_step, inputs=model_state, outputs=model_state)
    collector = EnvWorkers(config, policy.spec, open_shard)
    shuffle = np.random.default_rng(config.seed + 1)
    steps_per_update = config.num_envs * config.rollout_steps
    num_updates = max(1, config.total_steps // steps_per_update)
    env_steps, started = 0, time.perf_counter()
    try:
        for update in range(1, num_updates + 1):
            if config.anneal_lr:
                optimizer.learning_rate = config.learning_rate * (1.0 - (update - 1) / num_updates)
            rollout_started = time.perf_counter()
            rollout = collector.collect(RolloutPolicy(policy), config.rollout_steps, config.gamma)
            finished = [episode for step in rollout.finished for episode in step]
            rollout_s = time.perf_counter() - rollout_started
            env_steps += steps_per_update
            advantages, returns = episode_gae(
                rollout.rewards * config.reward_scale + rollout.bootstraps, rollout.values, rollout.ended,
                rollout.last_values, config.gamma, config.gae_lambda,
            )
            # The critic learns scaled returns, so the bootstrap (a value) is added after the scaling.
            batch = chunk(rollout, advantages, returns, config.chunk_length)
            num_chunks = batch["obs"].shape[0]
            per_minibatch = num_chunks // config.num_minibatches
            update_started, sums = time.perf_counter(), {}
            for _ in range(config.update_epochs):
                order = shuffle.permutation(num_chunks)
                for m in range(config.num_minibatches):
                    index = mx.array(order[m * per_minibatch : (m + 1) * per_minibatch])
                    minibatch = {key: value[index] for key, value in batch.items()}
                    metrics = update_step(minibatch)
                    mx.eval(model_state, metrics)
                    for key, value in metrics.items():
                        sums[key] = sums.get(key, 0.0) + value.item()
            count = config.update_epochs * config.num_minibatches
            metrics = {key: value / count for key, value in sums.items()}
            metrics.update(
                env_steps=env_steps, learning_rate=float(optimizer.learning_rate),
                rollout_s=rollout_s, update_s=time.perf_counter() - update_started,
                env_steps_per_s=env_steps / (time.perf_counter() - started),
            )
            if finished:
                metrics.update(
                    reward_episode_mean=float(np.mean([r for r, _ in finished])),
                    episode_length_mean=float(np.mean([n for _, n in finished])), episodes=len(finished),
                )
            if on_update is not None:
                on_update(env_steps, metrics)
            if update % config.eval_every == 0 or update == num_updates:
                # Seeds apart from `lazarus experts eval`'s (10_000 on), so choosing the best is not tuned to them.
                returns_eval = evaluate(RolloutPolicy(policy), config.eval_episodes, seed=TRAIN_EVAL_SEED)
                eval_metrics = {"reward_eval_mean": float(np.mean(returns_eval)),
                                "reward_eval_min": float(np.min(returns_eval))}
                if on_eval is not None:
                    on_eval(policy, env_steps, eval_metrics)
                if config.stop_at_return is not None and eval_metrics["reward_eval_mean"] >= config.stop_at_return:
                    break
    finally:
        collector.close()
    return policy


def train_to_directory(config: PPOConfig, out: str | Path, log: Callable[[str], None] = print,
                       open_shard: Callable[..., object] | None = None) -> dict:
    """Train with metrics (out/metrics.jsonl), the best-evaluated policy as the expert in `out`, the latest
    in `out/last/`, and plots in `out/plots/` (`open_shard`: as for `train`). Returns a summary: best eval
    return, env steps, seconds."""
    from lazarus.experts.registry import save_expert
    from lazarus.models.io import write_json
    from lazarus.observe.metrics import MetricsLogger
    from lazarus.observe.plots import plot_run

    out = Path(out)
    policy_spec(config)  # an unknown env or unusable spaces fail here, before anything is written
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "train_config.json", config.model_dump())
    best = {"eval_return": -np.inf, "env_steps": 0}
    started = time.perf_counter()

    with MetricsLogger(out, tensorboard=False) as metrics_log:

        def on_update(env_steps: int, metrics: dict) -> None:
            metrics_log.log(env_steps, metrics)

        def on_eval(policy: ExpertPolicy, env_steps: int, metrics: dict) -> None:
            metrics_log.log(env_steps, metrics)
            meta = {"env_steps": env_steps, "eval_return": metrics["reward_eval_mean"], "train": config.model_dump()}
            save_expert(policy, out / "last", meta)
            if metrics["reward_eval_mean"] > best["eval_return"]:
                best.update(eval_return=metrics["reward_eval_mean"], env_steps=env_steps)
                save_expert(policy, out, meta)
            log(f"env_steps {env_steps}  eval mean return {metrics['reward_eval_mean']:.1f}  "
                f"(best {best['eval_return']:.1f})  {time.perf_counter() - started:.0f}s")

        train(config, on_update, on_eval, open_shard)
    plot_run(out)
    return {"eval_return": best["eval_return"], "env_steps": best["env_steps"],
            "seconds": time.perf_counter() - started}
