"""The baseline of bench/experts.py: CleanRL's PPO recipe in torch (CPU), timed in env steps per second.

Run by bench/experts.py with the torch virtualenv's python (`make bench-experts` makes one); prints one JSON
line {"arch": ..., "env_steps_per_s": ..., "env_steps_per_cpu_s": ...}. Written for this bench from the
recipe's published settings, not CleanRL's code: gymnasium's SyncVectorEnv, a torch forward per env step
under no_grad, GAE, then `epochs` passes of `minibatches` minibatches with Adam (eps 1e-5), the clipped
surrogate, the clipped value loss, an entropy bonus and a 0.5 global gradient-norm clip.

  mlp (ppo.py):           4 envs x 128 steps, separate actor and critic MLPs 64-64 tanh, shuffled steps.
  gru (ppo_atari_lstm.py): 8 envs x 128 steps, shared encoder 64 + recurrent core 64 (a GRU here, as the
                          expert compared), minibatches of whole env sequences replayed from the state
                          stored at the rollout's start, episode starts zeroing the state.
"""

from __future__ import annotations

import argparse
import json
import time

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn


def layer(in_dims: int, out_dims: int, std: float = np.sqrt(2)) -> nn.Linear:
    module = nn.Linear(in_dims, out_dims)
    nn.init.orthogonal_(module.weight, std)
    nn.init.constant_(module.bias, 0.0)
    return module


class MlpAgent(nn.Module):
    def __init__(self, obs_dim: int, actions: int, hidden: int = 64):
        super().__init__()
        self.critic = nn.Sequential(
            layer(obs_dim, hidden), nn.Tanh(), layer(hidden, hidden), nn.Tanh(), layer(hidden, 1, 1.0)
        )
        self.actor = nn.Sequential(
            layer(obs_dim, hidden), nn.Tanh(), layer(hidden, hidden), nn.Tanh(), layer(hidden, actions, 0.01)
        )

    def evaluate(self, obs, actions=None):
        dist = torch.distributions.Categorical(logits=self.actor(obs))
        actions = dist.sample() if actions is None else actions
        return actions, dist.log_prob(actions), dist.entropy(), self.critic(obs)[:, 0]


class GruAgent(nn.Module):
    def __init__(self, obs_dim: int, actions: int, hidden: int = 64):
        super().__init__()
        self.encoder = layer(obs_dim, hidden)
        self.core = nn.GRU(hidden, hidden)
        self.actor, self.critic = layer(hidden, actions, 0.01), layer(hidden, 1, 1.0)

    def features(self, obs, state, starts):
        """obs [T*B, obs], starts [T*B], state [1, B, H] -> features [T*B, H], state."""
        x = torch.tanh(self.encoder(obs))
        batch = state.shape[1]
        x, starts = x.reshape(-1, batch, x.shape[-1]), starts.reshape(-1, batch)
        out = []
        for x_t, start_t in zip(x, starts):
            y, state = self.core(x_t.unsqueeze(0), state * (1.0 - start_t).view(1, -1, 1))
            out.append(y)
        return torch.flatten(torch.cat(out), 0, 1), state

    def evaluate(self, obs, state, starts, actions=None):
        features, state = self.features(obs, state, starts)
        dist = torch.distributions.Categorical(logits=self.actor(features))
        actions = dist.sample() if actions is None else actions
        return actions, dist.log_prob(actions), dist.entropy(), self.critic(features)[:, 0], state


def run(arch: str, updates: int, warmup: int) -> tuple[float, float]:
    """(env steps per wall second, env steps per CPU second of this process) over `updates` updates."""
    num_envs = 4 if arch == "mlp" else 8
    steps, minibatches, epochs, gamma, lam = 128, 4, 4, 0.99, 0.95
    envs = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1") for _ in range(num_envs)])
    obs_dim, actions = envs.single_observation_space.shape[0], int(envs.single_action_space.n)
    torch.manual_seed(0)
    agent = MlpAgent(obs_dim, actions) if arch == "mlp" else GruAgent(obs_dim, actions)
    optimizer = torch.optim.Adam(agent.parameters(), lr=2.5e-4, eps=1e-5)
    obs_buf = torch.zeros((steps, num_envs, obs_dim))
    act_buf, logp_buf, rew_buf, start_buf, val_buf = (torch.zeros((steps, num_envs)) for _ in range(5))
    obs, _ = envs.reset(seed=0)
    obs, starts = torch.tensor(obs, dtype=torch.float32), torch.zeros(num_envs)
    state = torch.zeros(1, num_envs, 64)
    started = None
    for update in range(warmup + updates):
        if update == warmup:
            started, started_cpu = time.perf_counter(), time.process_time()
        initial_state = state.clone()
        for t in range(steps):
            obs_buf[t], start_buf[t] = obs, starts
            with torch.no_grad():
                if arch == "mlp":
                    action, logp, _, value = agent.evaluate(obs)
                else:
                    action, logp, _, value, state = agent.evaluate(obs, state, starts)
            act_buf[t], logp_buf[t], val_buf[t] = action, logp, value
            next_obs, reward, terminated, truncated, _ = envs.step(action.numpy())
            rew_buf[t] = torch.tensor(reward)
            obs = torch.tensor(next_obs, dtype=torch.float32)
            starts = torch.tensor(np.logical_or(terminated, truncated), dtype=torch.float32)
        with torch.no_grad():
            if arch == "mlp":
                next_value = agent.critic(obs)[:, 0]
            else:
                next_value = agent.critic(agent.features(obs, state, starts)[0])[:, 0]
            advantages, last = torch.zeros_like(rew_buf), 0
            for t in reversed(range(steps)):
                next_start = starts if t == steps - 1 else start_buf[t + 1]
                following = next_value if t == steps - 1 else val_buf[t + 1]
                delta = rew_buf[t] + gamma * following * (1 - next_start) - val_buf[t]
                advantages[t] = last = delta + gamma * lam * (1 - next_start) * last
            returns = advantages + val_buf
        for _ in range(epochs):
            if arch == "mlp":
                order = np.random.permutation(steps * num_envs)
                size = len(order) // minibatches
                groups = [order[i * size : (i + 1) * size] for i in range(minibatches)]
            else:
                env_order = np.random.permutation(num_envs)
                size = num_envs // minibatches
                groups = [env_order[i * size : (i + 1) * size] for i in range(minibatches)]
            for group in groups:
                if arch == "mlp":
                    flat = lambda x: x.reshape(steps * num_envs, *x.shape[2:])[group]  # noqa: E731
                    _, logp, entropy, value = agent.evaluate(flat(obs_buf), flat(act_buf).long())
                else:
                    flat = lambda x: x[:, group].reshape(steps * len(group), *x.shape[2:])  # noqa: E731
                    _, logp, entropy, value, _ = agent.evaluate(
                        flat(obs_buf), initial_state[:, group], flat(start_buf), flat(act_buf).long()
                    )
                adv = flat(advantages)
                adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                ratio = (logp - flat(logp_buf)).exp()
                policy_loss = torch.max(-adv * ratio, -adv * ratio.clamp(0.8, 1.2)).mean()
                old_value, target = flat(val_buf), flat(returns)
                clipped = old_value + (value - old_value).clamp(-0.2, 0.2)
                value_loss = 0.5 * torch.max((value - target) ** 2, (clipped - target) ** 2).mean()
                loss = policy_loss - 0.01 * entropy.mean() + 0.5 * value_loss
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), 0.5)
                optimizer.step()
    envs.close()
    env_steps = updates * steps * num_envs
    return env_steps / (time.perf_counter() - started), env_steps / (time.process_time() - started_cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=["mlp", "gru"], required=True)
    parser.add_argument("--updates", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch intra-op threads; 1 suits networks this small (more only spin against the env loop)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rate, cpu_rate = run(args.arch, args.updates, args.warmup)
    print(json.dumps({"arch": args.arch, "env_steps_per_s": rate, "env_steps_per_cpu_s": cpu_rate,
                      "torch": torch.__version__,
                      "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
