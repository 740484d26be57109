"""Expert rollouts in env worker processes equal the single-process rollout (same seed), bit for bit: every
array, the episodes that ended, and so the trained policy; a worker that dies is an error naming it."""

import os
import signal
import time

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from lazarus.experts.config import preset
from lazarus.experts.policy import ExpertPolicy, RolloutPolicy
from lazarus.experts.ppo import policy_spec, train
from lazarus.experts.workers import EnvWorkerError, EnvWorkers, Rollout


def random_policy(config, seed):
    mx.random.seed(seed)
    policy = ExpertPolicy(policy_spec(config))
    # larger head weights than the init's, so actions depend on the observations and the recurrent state
    policy.update({"policy_head": {"weight": policy.policy_head.weight * 100}})
    mx.eval(policy.parameters())
    return policy


def rollouts(config, policies, steps):
    """One rollout per policy (new weights each time), from `EnvWorkers` over `config.workers` workers."""
    workers = EnvWorkers(config, policies[0].spec)
    try:
        return [workers.collect(RolloutPolicy(p), steps, config.gamma) for p in policies]
    finally:
        workers.close()


def assert_same_rollout(a: Rollout, b: Rollout):
    for name in Rollout.__dataclass_fields__:
        if name == "finished":
            assert a.finished == b.finished
        else:
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


@pytest.mark.parametrize("env, arch, workers", [("CartPole-v1", "gru", 2), ("Pendulum-v1", "lstm", 3)])
def test_rollouts_in_worker_processes_equal_the_single_process_rollouts(env, arch, workers):
    # given: 5 envs (CartPole episodes end and reset within a rollout; Pendulum's are truncated) and three
    # policies, one per rollout, so the workers must use the weights sent with each rollout
    config = preset(env, arch=arch, num_envs=5, rollout_steps=64, chunk_length=16, num_minibatches=1, seed=3)
    policies = [random_policy(config, seed) for seed in (0, 1, 2)]
    # when: the same rollouts are collected in this process and in worker processes, each stepping its share
    single = rollouts(config, policies, steps=64)
    split = rollouts(config.model_copy(update={"workers": workers}), policies, steps=64)
    # then: every array and every finished episode is the same
    assert sum(len(step) for r in single for step in r.finished) > 0 or env == "Pendulum-v1"
    for a, b in zip(single, split):
        assert_same_rollout(a, b)
    assert single[0].obs.shape == (64, 5, policies[0].spec.obs_dim)


def test_training_with_env_workers_ends_at_the_same_policy_as_in_one_process():
    # given: a short CartPole GRU training run, configured to step its envs here, then in 2 worker processes
    config = preset("CartPole-v1", arch="gru", num_envs=4, rollout_steps=32, chunk_length=16, num_minibatches=2,
                    update_epochs=2, total_steps=3 * 4 * 32, eval_every=10**6, eval_episodes=2, seed=7)
    updates = {0: [], 2: []}
    # when: each trains for three updates
    policies = {workers: train(config.model_copy(update={"workers": workers}),
                               on_update=lambda steps, metrics, w=workers: updates[w].append(metrics))
                for workers in (0, 2)}
    # then: the same episodes were seen and the same weights came out
    assert [m.get("reward_episode_mean") for m in updates[0]] == [m.get("reward_episode_mean") for m in updates[2]]
    for (name, a), (_, b) in zip(tree_flatten(policies[0].parameters()), tree_flatten(policies[2].parameters())):
        np.testing.assert_array_equal(np.array(a), np.array(b), err_msg=name)


@pytest.mark.parametrize("noticed", [False, True], ids=["asked-at-once", "after-the-pool-noticed"])
def test_a_worker_that_dies_is_an_error_naming_it_and_its_envs(noticed):
    # given: 4 envs over 2 worker processes, and one of them killed (its pool may or may not have seen it yet)
    config = preset("CartPole-v1", arch="mlp", num_envs=4, rollout_steps=16, chunk_length=16, num_minibatches=1,
                    workers=2)
    policy = random_policy(config, 0)
    workers = EnvWorkers(config, policy.spec)
    try:
        os.kill(workers.shards[1].pid, signal.SIGKILL)
        while noticed and not workers.shards[1].executor._broken:
            time.sleep(0.01)
        # when: a rollout is asked for
        with pytest.raises(EnvWorkerError, match=r"env worker 1 \(envs 2-3\) died"):
            workers.collect(RolloutPolicy(policy), 16, config.gamma)
    finally:
        workers.close()


def test_more_workers_than_envs_ray_without_workers_and_ray_without_its_launcher_are_refused():
    with pytest.raises(ValueError, match="workers 5 cannot exceed num_envs 4"):
        preset("CartPole-v1", num_envs=4, workers=5)
    with pytest.raises(ValueError, match="needs workers >= 1"):
        preset("CartPole-v1", num_envs=4, worker_launcher="ray")
    config = preset("CartPole-v1", arch="mlp", num_envs=4, workers=2, worker_launcher="ray")
    with pytest.raises(EnvWorkerError, match="--launcher ray"):
        EnvWorkers(config, policy_spec(config))
