"""Trainers on a real micro model and the generated math set: they learn, resume exactly, and only
run a reference forward when the loss needs one."""

import json

import mlx.core as mx
import mlx.optimizers as optim
import pytest
from mlx.utils import tree_flatten

from lazarus.algorithms.sft import sft_loss
from lazarus.models.load import load
from lazarus.models.lora import apply_lora
from lazarus.runtime.local import run_training
from lazarus.training.step import Stepper


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def losses(run_dir):
    return {m["step"]: m["loss"] for m in metrics(run_dir) if "loss" in m}


@pytest.mark.parametrize("algorithm,extra", [
    ("sft", []),
    ("grpo", ["lora.enabled=true", "rl.beta=0.05"]),
    ("ppo", ["lora.enabled=true", "rl.num_iterations=2"]),
    ("dpo", ["lora.enabled=true"]),
    ("dpo", ["lora.enabled=true", "dpo.loss_type=bco_pair", "optim.learning_rate=0.01"]),  # + its running mean
])
def test_resuming_from_step_k_reproduces_the_uninterrupted_losses(make_config, tmp_path, algorithm, extra):
    # given an uninterrupted 4-step run that checkpoints every 2 steps
    full = make_config(algorithm, "training.save_every=2", *extra, run="full")
    run_training(full)
    # when a second run stops at step 2 and a third resumes it to step 4
    part = make_config(algorithm, "training.save_every=2", "training.max_steps=2", *extra, run="part")
    run_training(part)
    resumed = make_config(algorithm, "training.save_every=2", *extra, run="part")
    run_training(resumed, resume=tmp_path / "part")
    # then steps 3 and 4 have the same losses (and metrics.jsonl has each step once)
    expected, got = losses(tmp_path / "full"), losses(tmp_path / "part")
    assert sorted(got) == [1, 2, 3, 4]
    for step in (3, 4):
        assert got[step] == pytest.approx(expected[step], abs=1e-5)


def test_sft_loss_goes_down(make_config, tmp_path):
    cfg = make_config("sft", "training.max_steps=30", "training.batch_size=8", "optim.learning_rate=0.003")
    run_training(cfg)
    history = losses(tmp_path / "run")
    assert sum(history[s] for s in (28, 29, 30)) < 0.7 * sum(history[s] for s in (1, 2, 3))
    assert (tmp_path / "run" / "model" / "model.safetensors").exists()


def test_dpo_raises_the_margin_of_chosen_over_rejected(make_config, math_dir, tmp_path):
    # given four preference pairs, each batch all four (a margin measured on fresh pairs per step is noise)
    pairs = (math_dir / "preference_train.jsonl").read_text().splitlines(keepends=True)[:4]
    (tmp_path / "four.jsonl").write_text("".join(pairs))
    cfg = make_config("dpo", "lora.enabled=true", "training.max_steps=15", "optim.learning_rate=0.003",
                      "dpo.beta=0.5", f"data.train={tmp_path / 'four.jsonl'}")
    # when DPO trains on them
    run_training(cfg)
    # then the policy's margin of chosen over rejected grows from 0 (policy = reference) and one
    # reference forward ran per batch, with the adapters off
    history = [m for m in metrics(tmp_path / "run") if "reward_margin" in m]
    assert history[0]["reward_margin"] == pytest.approx(0.0, abs=1e-4)
    assert history[-1]["reward_margin"] > 1.0
    assert history[-1]["reward_accuracy"] == 1.0
    assert history[-1]["reference_forward_passes"] == 15


def test_beta_zero_runs_no_reference_forward(make_config, tmp_path):
    run_training(make_config("grpo", "lora.enabled=true", "rl.beta=0"))
    assert all(m.get("reference_forward_passes", 0) == 0 for m in metrics(tmp_path / "run"))


def test_beta_positive_runs_one_reference_forward_per_batch(make_config, tmp_path):
    run_training(make_config("grpo", "lora.enabled=true", "rl.beta=0.1", "rl.num_iterations=2"))
    steps = [m for m in metrics(tmp_path / "run") if "reference_forward_passes" in m]
    assert [m["reference_forward_passes"] for m in steps] == [1, 2, 3, 4]


def test_grpo_metrics_cover_reward_kl_entropy_clip_and_speed(make_config, tmp_path):
    run_training(make_config("grpo", "lora.enabled=true", "rl.beta=0.1",
                             "rl.rewards=[{function: accuracy}, {function: format, weight: 0.1}]"))
    step = metrics(tmp_path / "run")[0]
    for key in ("loss", "reward_mean", "reward_std", "reward_accuracy_mean", "reward_format_mean", "accuracy",
                "kl", "entropy", "clip_fraction_low", "clip_fraction_high", "advantage_mean", "advantage_std",
                "completion_length_mean", "tokens_per_s", "generation_tokens_per_s", "step_s", "peak_memory_gb"):
        assert key in step, key
    assert (tmp_path / "run" / "adapter" / "adapters.safetensors").exists()


def test_lora_gradients_are_nonzero_under_mx_compile(micro_model_dir):
    # given a LoRA model and a compiled stepper
    model, _ = load(micro_model_dir)
    apply_lora(model, rank=4)
    before = {k: mx.array(v) for k, v in tree_flatten(model.trainable_parameters())}

    def loss(m, x, y, mask):
        value, n = sft_loss(m(x), y, mask)
        return value, {"n": n}

    stepper = Stepper(model, optim.SGD(learning_rate=0.5), loss, compile=True)
    x, y, mask = mx.array([[5, 6, 7, 8]]), mx.array([[6, 7, 8, 9]]), mx.ones((1, 4))
    # when two steps are taken (lora_b starts at 0, so lora_a's first gradient is 0)
    for _ in range(2):
        stepper.accumulate(x, y, mask)
        stepper.apply()
    # then every adapter tensor moved, and nothing else is trainable
    after = dict(tree_flatten(model.trainable_parameters()))
    assert after.keys() == before.keys()
    assert all(not mx.array_equal(after[k], before[k]) for k in after)


def test_gradient_accumulation_matches_one_big_batch(micro_model_dir):
    from lazarus.data.tokenize import TokenizedExample
    from lazarus.training.sft import collate_sft

    examples = [TokenizedExample([5, 6, 7, 8, 9], [0, 0, 1, 1, 1]), TokenizedExample([5, 9, 7], [0, 1, 1])]
    tokens = [sum(e.loss_mask[1:]) for e in examples]

    def grads(split):
        model, _ = load(micro_model_dir)
        stepper = Stepper(model, optim.SGD(learning_rate=0.0), lambda m, *b: (sft_loss(m(b[0]), b[1], b[2])[0], {}),
                          max_grad_norm=None, compile=False)
        if split:
            for e, n in zip(examples, tokens):
                stepper.accumulate(*collate_sft([e], 0), weight=n / sum(tokens))
        else:
            stepper.accumulate(*collate_sft(examples, 0))
        return dict(tree_flatten(stepper._grads))

    one, two = grads(False), grads(True)
    assert all(mx.allclose(one[k], two[k], atol=1e-5) for k in one)


def test_a_batch_where_every_group_scored_alike_does_not_move_the_weights(make_config, tmp_path):
    # given a random-init policy that never answers correctly (every reward is 0, so every advantage is 0)
    cfg = make_config("grpo", "rl.beta=0", "optim.learning_rate=0.1", "training.max_steps=1")
    learner, actor, tasks = local_roles(cfg)
    before = {k: mx.array(v) for k, v in tree_flatten(learner.model.trainable_parameters())}
    trajectories = actor.run_task(tasks.next_task(2, learner.policy_version))
    assert all(t.reward == 0 for t in trajectories)
    # when the learner consumes them
    metrics = learner.learn(trajectories)
    # then no optimizer step is taken (Adam's momentum would otherwise drift the weights)
    assert metrics["skipped_update"] == 1.0
    after = dict(tree_flatten(learner.model.trainable_parameters()))
    assert all(mx.array_equal(before[k], after[k]) for k in before)


def local_roles(cfg, reward_functions=None):
    """The learner, an actor sharing its model, and the task source: the local launcher's parts."""
    from lazarus.runtime.local import local_roles as roles

    learner, actor, tasks = roles(cfg)
    if reward_functions is not None:
        learner.reward_functions = actor.reward_functions = reward_functions
    return learner, actor, tasks


def starts_with_a_digit(prompts, completions, **kwargs):
    return [1.0 if c[:1].isdigit() else 0.0 for c in completions]


def test_grpo_learns_a_simple_verifiable_reward(make_config, tmp_path):
    # given a random-init policy that rarely starts its answer with a digit
    from lazarus.distributed.hub import ExperienceHub
    from lazarus.env.rewards import RewardFunction
    from lazarus.runtime.coordinator import Coordinator
    from lazarus.runtime.local import local_pump

    cfg = make_config("grpo", "optim.learning_rate=0.003", "training.max_steps=30", "training.batch_size=8",
                      "generation.num_generations=8", "generation.max_new_tokens=4")
    learner, actor, tasks = local_roles(cfg, [RewardFunction("digit", starts_with_a_digit)])
    hub = ExperienceHub(policy_version=lambda: learner.policy_version)
    # when GRPO trains on that reward
    Coordinator(cfg, learner, tasks, hub, pump=local_pump(hub, [actor]), actors=1).run()
    # then the reward rises to nearly always
    rewards = [m["reward_mean"] for m in metrics(tmp_path / "run") if "reward_mean" in m]
    assert sum(rewards[:5]) / 5 < 0.6 and sum(rewards[-5:]) / 5 > 0.9
