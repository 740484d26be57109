"""Off-policy learning in the RL learner: decoupled PPO on stale trajectories, and what it refuses.

The learner's update on a batch sampled one version ago must equal the decoupled-PPO update computed by
hand: the clip is taken around the proximal policy (the learner's weights before this batch) and the
behaviour policy enters only as a truncated importance weight.
"""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from lazarus.env.rewards import RewardFunction
from lazarus.training.rl import TrajectoryBatchError, collate


def lengths_vary(prompts, completions, **kwargs):
    """A reward that differs within every group (so every advantage is non-zero)."""
    return [float(len(c) % 3) + 0.1 * i for i, c in enumerate(completions)]


def roles(make_config, *overrides):
    from lazarus.runtime.local import local_roles

    cfg = make_config("grpo", "lora.enabled=true", "optim.optimizer=sgd", "optim.learning_rate=0.5",
                      "optim.max_grad_norm=null", "training.compile=false", "rl.loss_type=dapo",
                      "rl.epsilon_low=0.2", "rl.epsilon_high=0.28", "runtime.importance_cap=2.0", *overrides)
    learner, actor, tasks = local_roles(cfg, "t")
    learner.reward_functions = actor.reward_functions = [RewardFunction("lengths_vary", lengths_vary)]
    return cfg, learner, actor, tasks


@pytest.mark.parametrize("mode,proximal_passes", [
    ("sync", 1),  # a stale batch in sync mode (after a restart): the proximal logprobs are a forward pass of their own
    ("async", 0),  # async mode, one optimizer step per batch: they are the update's own forward pass, detached
])
def test_a_stale_batch_gives_the_decoupled_ppo_update_computed_by_hand(make_config, mode, proximal_passes):
    # given trajectories sampled at version 0, and a learner that has since moved to version 1
    cfg, learner, actor, tasks = roles(make_config, f"runtime.mode={mode}", "runtime.max_staleness=1")
    stale = actor.run_task(tasks.next_task(2, 0))
    learner.learn(actor.run_task(tasks.next_task(2, 0)))
    assert learner.policy_version == 1 and all(t.policy_version == 0 for t in stale)
    model = learner.model
    before = {k: mx.array(v) for k, v in tree_flatten(model.trainable_parameters())}

    # the update by hand: r = pi / pi_prox, w = min(pi_prox / pi_behaviour, cap), token-mean of -w min(rA, clip(r)A)
    batch = collate(stale, learner.pad_id)
    rewards = np.array(batch.rewards).reshape(-1, cfg.generation.num_generations)
    advantages = (rewards - rewards.mean(1, keepdims=True)) / (rewards.std(1, ddof=1, keepdims=True) + 1e-4)
    advantages = mx.array(advantages.reshape(-1, 1).astype(np.float32))
    mask = batch.mask
    model.eval()
    logits = model(batch.inputs)
    model.train()
    proximal = mx.stop_gradient(nn.log_softmax(logits, axis=-1))
    proximal = mx.take_along_axis(proximal, batch.targets[..., None], axis=-1).squeeze(-1)

    def loss_by_hand(m):
        logp = mx.take_along_axis(nn.log_softmax(m(batch.inputs), axis=-1), batch.targets[..., None],
                                  axis=-1).squeeze(-1)
        ratio = mx.exp(logp - proximal)
        weight = mx.minimum(mx.exp(proximal - batch.behavior_logprobs), 2.0)
        surrogate = mx.minimum(ratio * advantages, mx.clip(ratio, 0.8, 1.28) * advantages)
        return -(weight * surrogate * mask).sum() / mask.sum()

    grads = dict(tree_flatten(nn.value_and_grad(model, loss_by_hand)(model)[1]))
    expected = {k: before[k] - 0.5 * grads[k] for k in before}

    # when the learner learns from the stale batch
    metrics = learner.learn(stale)

    # then its update is that one, and it says the batch was one version old and how the proximal policy was had
    after = dict(tree_flatten(model.trainable_parameters()))
    for k in before:
        assert mx.allclose(after[k], expected[k], atol=1e-5).item(), k
    assert metrics["staleness_max"] == 1 and metrics["proximal_forward_passes"] == proximal_passes


def test_an_on_policy_batch_runs_no_proximal_forward(make_config):
    cfg, learner, actor, tasks = roles(make_config)
    metrics = learner.learn(actor.run_task(tasks.next_task(2, 0)))
    assert metrics["proximal_forward_passes"] == 0 and metrics["staleness_max"] == 0


def test_trajectories_sampled_with_other_settings_are_refused_naming_the_group(make_config):
    cfg, learner, actor, tasks = roles(make_config)
    task = tasks.next_task(1, 0)
    trajectories = actor.run_task(task)
    from dataclasses import replace

    hotter = [replace(t, sampling=replace(t.sampling, temperature=0.5)) for t in trajectories]
    with pytest.raises(TrajectoryBatchError, match=f"group {task.group_ids[0]}.*sampled with"):
        learner.learn(hotter)


def test_a_short_group_is_an_error_naming_the_group(make_config):
    cfg, learner, actor, tasks = roles(make_config)
    task = tasks.next_task(2, 0)
    trajectories = actor.run_task(task)
    with pytest.raises(TrajectoryBatchError, match=f"group {task.group_ids[1]} has 3 trajectories"):
        learner.learn(trajectories[:-1])


def test_groups_are_formed_by_group_id_not_by_position(make_config):
    # given two groups whose trajectories arrive interleaved
    cfg, learner, actor, tasks = roles(make_config, "training.max_steps=2")
    trajectories = actor.run_task(tasks.next_task(2, 0))
    interleaved = [t for pair in zip(trajectories[:4], trajectories[4:]) for t in pair]
    # when the learner learns from them, then it gives the same update as from the contiguous order
    twin = roles(make_config, "training.max_steps=2")[1]
    learner.learn(interleaved)
    twin.learn(trajectories)
    a = dict(tree_flatten(learner.model.trainable_parameters()))
    b = dict(tree_flatten(twin.model.trainable_parameters()))
    assert all(mx.allclose(a[k], b[k], atol=1e-6).item() for k in a)
