"""Recurrent PPO's bookkeeping: the update's replay reproduces the rollout's log-probs exactly (ratio 1
on-policy), the stored per-chunk state is what makes that so, and GAE follows its recursion."""

import mlx.core as mx
import numpy as np
import pytest

from lazarus.experts.config import preset
from lazarus.experts.envs import EnvBatch
from lazarus.experts.ppo import RolloutCollector, chunk, episode_gae, policy_spec, replay_logprobs
from lazarus.experts.policy import ExpertPolicy, RolloutPolicy

CASES = [("CartPole-v1", "gru"), ("CartPole-v1", "lstm"), ("CartPole-v1", "mlp"),
         ("Pendulum-v1", "gru"), ("Pendulum-v1", "lstm"), ("CartPoleNoVel-v1", "gru"), ("Projectile-v0", "lstm")]


def on_policy_batch(env, arch, steps=64, chunk_length=16, num_envs=4, seed=0):
    """A random-init expert, one rollout of `steps` x `num_envs` from its numpy twin, cut into chunks."""
    config = preset(env, arch=arch, num_envs=num_envs, rollout_steps=steps, chunk_length=chunk_length,
                    num_minibatches=1, seed=seed)
    mx.random.seed(seed)
    policy = ExpertPolicy(policy_spec(config))
    # train-like weights: a larger init so the recurrent state matters for the actions
    policy.update({"policy_head": {"weight": policy.policy_head.weight * 100}})
    envs = EnvBatch(env, num_envs, seed)
    twin = RolloutPolicy(policy)
    noise = twin.draw_noise(np.random.default_rng(seed), steps, num_envs)
    rollout = RolloutCollector(envs, policy.spec).collect(twin, steps, config.gamma, noise)
    envs.close()
    advantages, returns = episode_gae(rollout.rewards, rollout.values, rollout.ended, rollout.last_values, 0.99, 0.95)
    return policy, rollout, chunk(rollout, advantages, returns, chunk_length)


@pytest.mark.parametrize("env, arch", CASES)
def test_replayed_logprobs_equal_the_rollouts_so_the_on_policy_ratio_is_one(env, arch):
    # given: a rollout sampled by the numpy twin and cut into chunks with their stored initial states
    policy, rollout, batch = on_policy_batch(env, arch)
    # when: the MLX update replays every chunk from its stored state
    logprobs, _, values = replay_logprobs(policy, batch)
    # then: log-probs and values match the rollout's, so pi / pi_old = 1 to within 1e-5
    ratio = np.exp(np.array(logprobs) - np.array(batch["logprobs"]))
    assert np.abs(ratio - 1).max() < 1e-5
    np.testing.assert_allclose(np.array(values), np.array(batch["values"]), atol=1e-5)


@pytest.mark.parametrize("arch", ["gru", "lstm"])
def test_replay_from_a_zero_state_instead_of_the_stored_one_changes_the_logprobs(arch):
    # given: chunks that begin mid-episode, so their stored initial state is not zero
    policy, rollout, batch = on_policy_batch("CartPole-v1", arch)
    mid_episode = (np.array(batch["starts"])[:, 0] == 0) & (np.abs(np.array(batch["state0"])).sum(axis=1) > 0)
    assert mid_episode.any()
    # when: they are replayed from zeros (what a recurrent PPO that forgot the state would do)
    zeroed = {**batch, "state0": mx.zeros_like(batch["state0"])}
    logprobs, _, _ = replay_logprobs(policy, zeroed)
    # then: the first steps of those chunks no longer match the rollout
    gap = np.abs(np.array(logprobs) - np.array(batch["logprobs"]))[mid_episode, 0]
    assert gap.max() > 1e-3


def test_chunks_are_consecutive_steps_of_one_env_with_the_state_stored_at_their_first_step():
    policy, rollout, batch = on_policy_batch("CartPole-v1", "gru", steps=32, chunk_length=8, num_envs=3)
    # chunk index = env * chunks_per_env + c
    env, c = 2, 3
    np.testing.assert_array_equal(np.array(batch["obs"])[env * 4 + c], rollout.obs[c * 8 : c * 8 + 8, env])
    np.testing.assert_array_equal(np.array(batch["state0"])[env * 4 + c], rollout.states[c * 8, env])


def test_episode_gae_follows_the_recursion_and_cuts_it_at_episode_ends():
    # given: one env, 3 steps, the episode ends after step 1 (index 1)
    rewards = np.array([[1.0], [2.0], [0.5]], np.float32)
    values = np.array([[0.1], [0.2], [0.3]], np.float32)
    ended = np.array([[0.0], [1.0], [0.0]], np.float32)
    last_values = np.array([0.7], np.float32)
    gamma, lam = 0.9, 0.8
    # when
    advantages, returns = episode_gae(rewards, values, ended, last_values, gamma, lam)
    # then: by hand, from the back
    a2 = 0.5 + gamma * 0.7 - 0.3
    a1 = 2.0 - 0.2  # episode ended: no bootstrap, no carry
    a0 = (1.0 + gamma * 0.2 - 0.1) + gamma * lam * a1
    np.testing.assert_allclose(advantages[:, 0], [a0, a1, a2], rtol=1e-6)
    np.testing.assert_allclose(returns[:, 0], [a0 + 0.1, a1 + 0.2, a2 + 0.3], rtol=1e-6)


def test_truncated_episodes_are_bootstrapped_with_the_value_of_their_last_observation():
    # given: Pendulum, whose episodes all end by the 200-step time limit
    policy, rollout, _ = on_policy_batch("Pendulum-v1", "gru", steps=208, chunk_length=16, num_envs=2)
    # then: exactly the truncation steps carry a bootstrap, and those are nonzero
    assert (rollout.ended[199] == 1).all() and rollout.ended.sum() == 2
    assert (rollout.bootstraps[199] != 0).all() and np.count_nonzero(rollout.bootstraps) == 2
