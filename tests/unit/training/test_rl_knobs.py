"""The RL/PPO knobs wired into the learners, on a real micro model through `run_training`: mini-batches
(several optimizer steps per generated batch), micro-batches that change memory and not the result,
KL in the reward, TRL's RLOO, dual-clip and loss aggregation, and PPO's separate value-head optimizer."""

import dataclasses
import json

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from mlx.utils import tree_flatten

from lazarus.runtime.build import build_learner
from lazarus.runtime.local import run_training
from lazarus.training.rl import TrajectoryBatchError, update_plan


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_update_plan_takes_whole_groups_per_optimizer_step_and_splits_them_into_micro_batches():
    plan = update_plan(num_rows=16, group_size=4, mini_batch_prompts=2, micro_batch_rows=3)

    assert [[list(m) for m in mini] for mini in plan] == [
        [[0, 1, 2], [3, 4, 5], [6, 7]], [[8, 9, 10], [11, 12, 13], [14, 15]]]


def test_update_plan_without_sizes_is_one_step_cut_into_grad_accum_pieces():
    plan = update_plan(num_rows=8, group_size=4, mini_batch_prompts=None, micro_batch_rows=None, grad_accum_steps=2)

    assert [[list(m) for m in mini] for mini in plan] == [[[0, 1, 2, 3], [4, 5, 6, 7]]]


def sampled_batch(cfg, learner):
    """One batch of real trajectories from an actor sharing `learner`'s model, with rewards that vary
    inside every group (alternating 1, 0), so that every knob has advantages to act on."""
    from lazarus.runtime.build import read_rl_prompts
    from lazarus.runtime.coordinator import TaskSource
    from lazarus.runtime.roles import RolloutActor, SharedWeights

    records, ids = read_rl_prompts(cfg, learner.tokenizer)
    actor = RolloutActor("a0", learner.model, learner.tokenizer, learner.reward_functions,
                         SharedWeights(lambda: learner.policy_version))
    tasks = TaskSource(cfg, records, ids, "test")
    actor.sync_weights()  # on-policy: the actor holds the learner's version
    trajectories = actor.run_task(tasks.next_task(cfg.training.batch_size, learner.policy_version))
    return [dataclasses.replace(t, reward=float(i % 2)) for i, t in enumerate(trajectories)]


@pytest.mark.parametrize("algorithm", ["grpo", "ppo"])
def test_mini_batches_take_several_optimizer_steps_per_generated_batch(make_config, algorithm):
    cfg = make_config(algorithm, "rl.mini_batch_size=2", "rl.num_iterations=2", "lora.enabled=true")
    learner = build_learner(cfg)

    result = learner.learn(sampled_batch(cfg, learner))

    # batch_size 4 prompts / 2 per mini-batch, x 2 passes
    assert result["optimizer_steps"] == 4
    assert learner.policy_version == 1


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_micro_batches_change_memory_not_the_update(make_config, agg):
    # given two identical learners, one taking the batch whole and one in micro-batches of 3 completions
    # (SGD: Adam's first step is lr * sign(g), which turns float rounding in a near-zero gradient into lr)
    common = [f"rl.loss_agg_mode={agg}", "optim.optimizer=sgd", "optim.learning_rate=0.5", "optim.max_grad_norm=null"]
    whole_cfg, micro_cfg = make_config("grpo", *common), make_config("grpo", *common, "rl.micro_batch_size=3")
    whole, micro = build_learner(whole_cfg), build_learner(micro_cfg)
    before = {k: mx.array(v) for k, v in tree_flatten(whole.model.trainable_parameters())}
    trajectories = sampled_batch(whole_cfg, whole)

    # when both learn from the same trajectories
    whole.learn(trajectories)
    micro.learn(trajectories)

    # then their weights agree, and they did move
    after_whole = dict(tree_flatten(whole.model.trainable_parameters()))
    after_micro = dict(tree_flatten(micro.model.trainable_parameters()))
    for name, value in after_whole.items():
        np.testing.assert_allclose(np.array(after_micro[name]), np.array(value), atol=2e-5, rtol=1e-4)
    assert any(not mx.allclose(before[k], after_whole[k]).item() for k in before)


def test_the_loss_on_completion_columns_only_equals_the_loss_on_whole_rows(make_config):
    # given: a learner, a batch of real trajectories laid out as the update lays them out, and the first
    # column any completion starts at (the update rounds it down to 16; any column before it will do)
    from lazarus.training.rl import collate, group_trajectories

    cfg = make_config("grpo", "lora.enabled=true")
    learner = build_learner(cfg)
    trajectories = group_trajectories(sampled_batch(cfg, learner), cfg.generation.num_generations)
    batch = collate(trajectories, learner.pad_id)
    advantages = learner.advantages(batch.rewards, [t.group_id for t in trajectories], batch.mask)
    start = int(np.argmax(np.array(batch.mask) > 0, axis=-1).min())
    assert start > 0  # the slice skips the prompt's columns

    def loss_and_grads(s):
        return nn.value_and_grad(learner.model, lambda *a: learner.loss(learner.model, *a)[0])(
            batch.inputs, batch.targets[:, s:], batch.mask[:, s:], batch.behavior_logprobs[:, s:], advantages)

    # when: the loss and its gradient on the completion columns only, and on the whole rows
    tail_loss, tail_grads = loss_and_grads(start)
    whole_loss, whole_grads = loss_and_grads(0)
    # then: the same loss and gradient
    assert tail_loss.item() == pytest.approx(whole_loss.item(), rel=1e-5, abs=1e-7)
    for (name, grad), (_, expected) in zip(tree_flatten(tail_grads), tree_flatten(whole_grads)):
        np.testing.assert_allclose(np.array(grad), np.array(expected), atol=1e-6, rtol=1e-4, err_msg=name)


@pytest.mark.parametrize("algorithm, extra, keys", [
    ("grpo", [], ("loss", "kl", "entropy")),
    ("ppo", ["rl.kl_placement=loss"], ("value_mean", "return_mean", "loss", "policy_loss", "value_loss", "entropy",
                                       "kl")),
    ("ppo", ["rl.kl_placement=loss", "rl.loss_agg_mode=seq-mean-token-sum-norm"], ("loss", "value_loss")),
], ids=["grpo", "ppo", "ppo_sum_norm"])
def test_the_update_through_shared_prompts_equals_the_update_on_whole_rows(make_config, algorithm, extra, keys):
    # given: two identical LoRA learners with a KL term (so the reference pass runs too) and micro-batches of 3
    # completions (so groups are cut across micro-batches); one runs each group's prompt once, the other whole
    # rows; and real trajectories whose prompts differ in length (so the shared prompts are left-padded)
    common = ["lora.enabled=true", "rl.beta=0.05", "rl.micro_batch_size=3", "optim.optimizer=sgd",
              "optim.learning_rate=0.5", "optim.max_grad_norm=null", *extra]
    shared_cfg = make_config(algorithm, *common)
    shared, whole = build_learner(shared_cfg), build_learner(make_config(algorithm, *common))
    whole.share_prefix = False
    trajectories = sampled_batch(shared_cfg, shared)
    assert shared.share_prefix and len({len(t.prompt_ids) for t in trajectories}) > 1

    # when both learn from them
    shared_metrics, whole_metrics = shared.learn(trajectories), whole.learn(trajectories)

    # then: the same loss, KL, entropy (and PPO's values and value loss), and the same weights after (PPO's value
    # head included), to float rounding
    for key in keys:
        assert shared_metrics[key] == pytest.approx(whole_metrics[key], rel=1e-4, abs=1e-6), key
    trained = [learner.optimizer_target or learner.model for learner in (shared, whole)]
    after_whole = dict(tree_flatten(trained[1].trainable_parameters()))
    for name, value in tree_flatten(trained[0].trainable_parameters()):
        np.testing.assert_allclose(np.array(value), np.array(after_whole[name]), atol=2e-5, rtol=1e-4, err_msg=name)


def test_ppo_values_before_the_update_are_the_value_heads_on_whole_rows(make_config):
    # given a PPO learner and a collated batch of real trajectories
    from lazarus.training.rl import collate, group_trajectories

    cfg = make_config("ppo", "lora.enabled=true")
    learner = build_learner(cfg)
    batch = collate(group_trajectories(sampled_batch(cfg, learner), cfg.generation.num_generations), learner.pad_id)
    # when the learner computes its old values (through shared prompts), and the policy-with-value module runs
    # whole rows
    old_values = learner.old_values(batch)
    _, whole_values = learner.both(batch.inputs)
    # then they agree on every completion token
    mask = np.array(batch.mask) > 0
    np.testing.assert_allclose(np.array(old_values)[mask], np.array(whole_values)[mask], atol=1e-5, rtol=1e-4)


def test_micro_batch_size_with_grad_accum_steps_is_refused(make_config):
    cfg = make_config("grpo", "rl.micro_batch_size=4", "training.grad_accum_steps=2")

    with pytest.raises(TrajectoryBatchError, match="rl.micro_batch_size or training.grad_accum_steps"):
        build_learner(cfg)


@pytest.mark.parametrize("extra", [
    ["rl.kl_placement=reward", "rl.beta=0.05", "rl.kl_estimator=low_var_kl"],
    ["rl.advantage=rloo", "rl.rloo_form=trl", "rl.beta=0.05"],
    ["rl.clip_ratio_c=3.0", "rl.delta=1.5", "rl.loss_agg_mode=seq-mean-token-sum", "rl.scale_rewards=batch"],
    ["rl.advantage=reinforce_pp"],
], ids=["kl_in_reward", "trl_rloo", "dual_clip_delta_agg", "reinforce_pp_tokens"])
def test_grpo_knobs_update_with_finite_losses(make_config, extra):
    cfg = make_config("grpo", "lora.enabled=true", *extra)
    learner = build_learner(cfg)

    result = learner.learn(sampled_batch(cfg, learner))

    assert result["skipped_update"] == 0.0 and np.isfinite(result["loss"]) and np.isfinite(result["grad_norm"])


def test_kl_in_the_reward_takes_the_kl_out_of_the_loss(make_config):
    learner = build_learner(make_config("grpo", "lora.enabled=true", "rl.beta=0.1", "rl.kl_placement=reward"))

    assert learner.kl_in_reward and learner.loss_beta == 0.0


def test_ppo_value_lr_gives_the_value_head_its_own_optimizer_and_resumes_exactly(make_config, tmp_path):
    full = make_config("ppo", "lora.enabled=true", "rl.value_lr=0.05", "training.save_every=1",
                       "training.max_steps=2", run="full")
    learner = build_learner(full)
    assert [o.learning_rate.item() for o in learner.optimizer.optimizers] == pytest.approx([0.001, 0.05])
    run_training(full)
    part = make_config("ppo", "lora.enabled=true", "rl.value_lr=0.05", "training.save_every=1",
                       "training.max_steps=1", run="part")
    run_training(part)
    resumed = make_config("ppo", "lora.enabled=true", "rl.value_lr=0.05", "training.save_every=1",
                          "training.max_steps=2", run="part")
    run_training(resumed, resume=tmp_path / "part")

    def loss_at_2(run):
        return next(m["loss"] for m in metrics(tmp_path / run) if m.get("step") == 2 and "loss" in m)

    assert loss_at_2("part") == pytest.approx(loss_at_2("full"), abs=1e-5)


def test_the_actor_samples_through_merged_adapters_only_with_lora_merge_for_sampling(make_config):
    from lazarus.env.rewards import RewardFunction
    from lazarus.runtime.local import local_roles

    # given in-process roles of a LoRA run whose adapters change the policy, with a reward that notes what
    # kind of layer the policy's first query projection is while the batch is sampled and scored
    learner, actor, tasks = local_roles(make_config("grpo", "lora.enabled=true"))
    for name, m in learner.model.named_modules():
        if hasattr(m, "lora_b"):
            m.lora_b = 0.05 * mx.random.normal(m.lora_b.shape, key=mx.random.key(len(name)))
    seen = []

    def layer_kind(prompts, completions, **_):
        seen.append(type(learner.model.layers[0].self_attn.q_proj).__name__)
        return [float(i % 2) for i in range(len(completions))]

    actor.reward_functions = [RewardFunction("layer_kind", layer_kind)]
    task = tasks.next_task(4, learner.policy_version)

    # when it samples one seeded task with lora.merge_for_sampling auto (the default; a micro model's merged
    # weights are far below its limit), then the same task off
    assert actor.merge_adapters == "auto"
    merged = actor.run_task(task)
    actor.merge_adapters = False
    unmerged = actor.run_task(task)

    # then the first ran through merged linear layers and the second through the adapters, which are back
    assert seen == ["Linear", "LoRALinear"]
    assert type(learner.model.layers[0].self_attn.q_proj).__name__ == "LoRALinear"
    # and both sampled the same tokens with the same behaviour logprobs, to float rounding
    assert [list(t.completion_ids) for t in merged] == [list(t.completion_ids) for t in unmerged]
    for a, b in zip(merged, unmerged):
        assert np.allclose(a.behavior_logprobs, b.behavior_logprobs, atol=1e-4)


@pytest.mark.parametrize("setting,limit,expected", [("false", None, "LoRALinear"), ("auto", 0, "LoRALinear"),
                                                     ("true", 0, "Linear")])
def test_lora_merge_for_sampling_off_or_auto_above_its_limit_samples_through_the_adapters(
        make_config, monkeypatch, setting, limit, expected):
    from lazarus.env.rewards import RewardFunction
    from lazarus.runtime import roles
    from lazarus.runtime.local import local_roles

    # given lora.merge_for_sampling off, or auto with merged weights above its limit, or on whatever their size
    if limit is not None:
        monkeypatch.setattr(roles, "AUTO_MERGE_MAX_BYTES", limit)
    learner, actor, tasks = local_roles(make_config("grpo", "lora.enabled=true",
                                                    f"lora.merge_for_sampling={setting}"))
    seen = []
    actor.reward_functions = [RewardFunction("layer_kind", lambda prompts, completions, **_: seen.append(
        type(learner.model.layers[0].self_attn.q_proj).__name__) or [0.0] * len(completions))]

    # when the actor samples a task
    actor.run_task(tasks.next_task(4, learner.policy_version))

    # then it sampled through the adapters, or through merged layers when told to merge whatever their size
    assert seen == [expected]
