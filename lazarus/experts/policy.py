"""Expert policies on mlx.nn: an encoder, a GRU / LSTM / MLP core, a policy head and a value head.

    x_t = tanh(W_e obs_t + b_e)
    s_t = core(x_t, s_{t-1} * (1 - start_t))          start_t = 1 on the first step of an episode
    head: categorical logits, or the mean of a tanh-squashed Gaussian (a learned, state-free log std)
    value: V(s_t)

The recurrent state `s` is one array [B, state_size] per batch (h for a GRU, h and c side by side for an
LSTM, empty for the MLP), so the rollout stores it per step the same way for every core. A `start` flag
zeroes it where an episode begins; the update replays each stored chunk from its stored initial state
with the same flags, so on-policy it recomputes exactly the rollout's log-probs.

`RolloutPolicy` is the numpy twin of `ExpertPolicy` for the rollout: one env step for N envs is a handful
of small matrix products, where MLX's per-op overhead on CPU would cost more than the math. It is built
from the MLX weights after each update; the PPO update always recomputes log-probs with MLX.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from lazarus.experts.config import PolicySpec
from lazarus.experts.distributions import (
    categorical_entropy,
    categorical_logprob,
    gaussian_entropy,
    np_categorical_logprob,
    np_squashed_gaussian_logprob,
    squashed_gaussian_logprob,
)


def _scaled_linear(in_dims: int, out_dims: int, scale: float) -> nn.Linear:
    """A Linear layer with its weight scaled (CleanRL's small policy-head init) and a zero bias."""
    layer = nn.Linear(in_dims, out_dims)
    layer.weight = layer.weight * scale
    layer.bias = mx.zeros((out_dims,))
    return layer


class ExpertPolicy(nn.Module):
    def __init__(self, spec: PolicySpec):
        super().__init__()
        self.spec = spec
        hidden = spec.hidden_size
        self.encoder = nn.Linear(spec.obs_dim, hidden)
        if spec.arch == "gru":  # r, z, n gates: n = tanh(Wx x + r * (Wh h + b_hn))
            self.core_input = nn.Linear(hidden, 3 * hidden)
            self.core_state = nn.Linear(hidden, 3 * hidden)
        elif spec.arch == "lstm":  # i, f, g, o gates
            self.core_input = nn.Linear(hidden, 4 * hidden)
            self.core_state = nn.Linear(hidden, 4 * hidden, bias=False)
        else:
            self.core_input = nn.Linear(hidden, hidden)
        self.policy_head = _scaled_linear(hidden, spec.action_dim, 0.01)
        self.value_head = _scaled_linear(hidden, 1, 1.0)
        if spec.action_kind == "continuous":
            self.log_std = mx.full((spec.action_dim,), spec.init_log_std)

    def initial_state(self, batch: int) -> mx.array:
        return mx.zeros((batch, self.spec.state_size))

    def core_step(self, x: mx.array, state: mx.array) -> tuple[mx.array, mx.array]:
        """x [B, H], state [B, S] -> (features [B, H], next state [B, S])."""
        hidden = self.spec.hidden_size
        if self.spec.arch == "gru":
            gx, gh = self.core_input(x), self.core_state(state)
            r = mx.sigmoid(gx[:, :hidden] + gh[:, :hidden])
            z = mx.sigmoid(gx[:, hidden : 2 * hidden] + gh[:, hidden : 2 * hidden])
            n = mx.tanh(gx[:, 2 * hidden :] + r * gh[:, 2 * hidden :])
            h = (1 - z) * n + z * state
            return h, h
        if self.spec.arch == "lstm":
            h, c = state[:, :hidden], state[:, hidden:]
            gates = self.core_input(x) + self.core_state(h)
            i, f = mx.sigmoid(gates[:, :hidden]), mx.sigmoid(gates[:, hidden : 2 * hidden])
            g, o = mx.tanh(gates[:, 2 * hidden : 3 * hidden]), mx.sigmoid(gates[:, 3 * hidden :])
            c = f * c + i * g
            h = o * mx.tanh(c)
            return h, mx.concatenate([h, c], axis=1)
        return mx.tanh(self.core_input(x)), state

    def __call__(
        self, obs: mx.array, starts: mx.array, state: mx.array
    ) -> tuple[mx.array, mx.array, mx.array]:
        """obs [B, T, obs_dim], starts [B, T], state [B, S] (before step 0) ->
        (head output [B, T, A]: logits or Gaussian means, values [B, T], state after the last step)."""
        x = mx.tanh(self.encoder(obs))
        keep = 1.0 - starts.astype(mx.float32)
        features = []
        for t in range(obs.shape[1]):
            feature, state = self.core_step(x[:, t], state * keep[:, t, None])
            features.append(feature)
        features = mx.stack(features, axis=1)
        return self.policy_head(features), self.value_head(features)[..., 0], state

    def logprob_entropy(self, head: mx.array, actions: mx.array) -> tuple[mx.array, mx.array]:
        """log pi(actions) and the entropy bonus term, each [B, T]; continuous actions are the pre-tanh u."""
        if self.spec.action_kind == "discrete":
            return categorical_logprob(head, actions), categorical_entropy(head)
        log_std = mx.broadcast_to(self.log_std, head.shape)
        return squashed_gaussian_logprob(head, log_std, actions), gaussian_entropy(log_std)


class RolloutPolicy:
    """The numpy twin of an `ExpertPolicy` (same weights, same math, float32 results) for stepping envs."""

    def __init__(self, policy: ExpertPolicy | None = None, *, spec: PolicySpec | None = None,
                 weights: dict[str, np.ndarray] | None = None):
        """From an `ExpertPolicy`, or (in an env worker, without MLX work) from its spec and numpy weights."""
        if policy is not None:
            spec = policy.spec
            weights = {name: np.array(value, dtype=np.float32) for name, value in tree_flatten(policy.parameters())}
        self.spec, self.weights = spec, weights
        self._weights64 = {name: value.astype(np.float64) for name, value in weights.items()}
        if self.spec.action_kind == "continuous":
            low, high = np.array(self.spec.action_low, np.float32), np.array(self.spec.action_high, np.float32)
            self._action_center, self._action_half_range = (high + low) / 2, (high - low) / 2

    def initial_state(self, batch: int) -> np.ndarray:
        return np.zeros((batch, self.spec.state_size), np.float32)

    def _linear(self, name: str, x: np.ndarray) -> np.ndarray:
        """x W^T + b, accumulated in float64 and rounded to float32: float32 BLAS products can differ in the
        last bit with the number of rows, and a rollout split over env workers must equal the whole one."""
        y = x.astype(np.float64) @ self._weights64[f"{name}.weight"].T
        bias = self._weights64.get(f"{name}.bias")
        return (y if bias is None else y + bias).astype(np.float32)

    def step(self, obs: np.ndarray, starts: np.ndarray, state: np.ndarray):
        """obs [N, obs_dim], starts [N], state [N, S] -> (head output [N, A], values [N], next state [N, S])."""
        hidden = self.spec.hidden_size
        x = np.tanh(self._linear("encoder", obs.astype(np.float32)))
        state = state * (1.0 - starts.astype(np.float32))[:, None]
        if self.spec.arch == "gru":
            gx, gh = self._linear("core_input", x), self._linear("core_state", state)
            r = _sigmoid(gx[:, :hidden] + gh[:, :hidden])
            z = _sigmoid(gx[:, hidden : 2 * hidden] + gh[:, hidden : 2 * hidden])
            n = np.tanh(gx[:, 2 * hidden :] + r * gh[:, 2 * hidden :])
            feature = state = (1 - z) * n + z * state
        elif self.spec.arch == "lstm":
            h, c = state[:, :hidden], state[:, hidden:]
            gates = self._linear("core_input", x) + self._linear("core_state", h)
            i, f = _sigmoid(gates[:, :hidden]), _sigmoid(gates[:, hidden : 2 * hidden])
            g, o = np.tanh(gates[:, 2 * hidden : 3 * hidden]), _sigmoid(gates[:, 3 * hidden :])
            c = f * c + i * g
            feature = o * np.tanh(c)
            state = np.concatenate([feature, c], axis=1)
        else:
            feature = np.tanh(self._linear("core_input", x))
        return self._linear("policy_head", feature), self._linear("value_head", feature)[:, 0], state

    def draw_noise(self, rng: np.random.Generator, *batch: int) -> np.ndarray:
        """The randomness `act` consumes for a head of shape [*batch, action_dim]: uniforms (Gumbel-max) or
        standard normals. Drawn in one block, it is the same stream as drawn step by step (numpy's
        generators fill arrays in order), so a rollout's noise can be drawn up front and cut per env worker."""
        shape = (*batch, self.spec.action_dim)
        if self.spec.action_kind == "discrete":
            return rng.uniform(1e-12, 1.0, shape)
        return rng.standard_normal(shape).astype(np.float32)

    def act(self, head: np.ndarray, noise: np.ndarray | None):
        """Sample the head's distribution with `noise` (from `draw_noise`), or with None take its mode.

        Returns (stored action: the index, or the pre-tanh u; the env action; log pi of the stored action).
        """
        if self.spec.action_kind == "discrete":
            if noise is None:
                actions = head.argmax(axis=-1)
            else:  # Gumbel-max: one draw per env, no per-env Python loop
                actions = (head - np.log(-np.log(noise))).argmax(axis=-1)
            return actions, actions, np_categorical_logprob(head, actions)
        log_std = np.broadcast_to(self.weights["log_std"], head.shape)
        u = head if noise is None else head + np.exp(log_std) * noise
        u = u.astype(np.float32)
        env_actions = self._action_center + self._action_half_range * np.tanh(u)
        return u, env_actions, np_squashed_gaussian_logprob(head, log_std, u)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (np.tanh(0.5 * x) + 1.0)
