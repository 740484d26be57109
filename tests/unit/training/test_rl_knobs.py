"""The RL/PPO knobs wired into the learners, on a real micro model through `run_training`: mini-batches
(several optimizer steps per generated batch), micro-batches that change memory and not the result,
KL in the reward, TRL's RLOO, dual-clip and loss aggregation, and PPO's separate value-head optimizer."""

import json

import mlx.core as mx
import numpy as np
import pytest

from lazarus.runtime.build import build_learner
from lazarus.runtime.local import run_training
from lazarus.training.rl import TrajectoryBatchError, update_plan


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def step_metrics(run_dir):
    return [m for m in metrics(run_dir) if "optimizer_steps" in m]


def test_update_plan_takes_whole_groups_per_optimizer_step_and_splits_them_into_micro_batches():
    plan = update_plan(num_rows=16, group_size=4, mini_batch_prompts=2, micro_batch_rows=3)

    assert [[list(m) for m in mini] for mini in plan] == [
        [[0, 1, 2], [3, 4, 5], [6, 7]], [[8, 9, 10], [11, 12, 13], [14, 15]]]


def test_update_plan_without_sizes_is_one_step_cut_into_grad_accum_pieces():
    plan = update_plan(num_rows=8, group_size=4, mini_batch_prompts=None, micro_batch_rows=None, grad_accum_steps=2)

    assert [[list(m) for m in mini] for mini in plan] == [[[0, 1, 2, 3], [4, 5, 6, 7]]]


@pytest.mark.parametrize("algorithm", ["grpo", "ppo"])
def test_mini_batches_take_several_optimizer_steps_per_generated_batch(make_config, tmp_path, algorithm):
    cfg = make_config(algorithm, "rl.mini_batch_size=2", "rl.num_iterations=2", "training.max_steps=2",
                      "lora.enabled=true")

    run_training(cfg)

    # batch_size 4 prompts / 2 per mini-batch x 2 passes (unless PPO's target_kl stopped early: not set)
    assert [m["optimizer_steps"] for m in step_metrics(tmp_path / "run")] == [4, 4]


def exported_weights(model_dir):
    return mx.load(str(model_dir / "model.safetensors"))


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_micro_batches_change_memory_not_the_update(make_config, tmp_path, micro_model_dir, agg):
    # given the same one-step run as one batch and as micro-batches of 3 completions (groups of 4)
    common = ["training.max_steps=1", f"rl.loss_agg_mode={agg}", "optim.learning_rate=0.01",
              "optim.max_grad_norm=null", "training.compile=false"]
    run_training(make_config("grpo", *common, run="whole"))
    run_training(make_config("grpo", *common, "rl.micro_batch_size=3", run="micro"))

    # then the trained weights agree
    whole, micro = exported_weights(tmp_path / "whole" / "model"), exported_weights(tmp_path / "micro" / "model")
    initial = exported_weights(micro_model_dir)
    assert sorted(whole) == sorted(micro)
    for name in whole:
        np.testing.assert_allclose(np.array(micro[name]), np.array(whole[name]), atol=2e-5, rtol=1e-4)
    # and the step did move the weights (the comparison is not between two untouched models)
    assert any(not np.allclose(np.array(whole[name]), np.array(initial[name])) for name in whole)


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
def test_grpo_knobs_train_with_finite_losses(make_config, tmp_path, extra):
    run_training(make_config("grpo", "lora.enabled=true", "training.max_steps=2", *extra))

    logged = [m for m in metrics(tmp_path / "run") if "loss" in m]
    assert len(logged) == 2 and all(np.isfinite(m["loss"]) for m in logged)


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
