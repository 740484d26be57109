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



@pytest.mark.parametrize("loss_type", ["sigmoid", "orpo"])
def test_dpo_through_shared_prompts_gives_the_logprobs_loss_and_gradients_of_whole_rows(make_config, loss_type):
    import mlx.nn as nn

    from lazarus.algorithms.logprobs import sequence_logprobs, token_logprobs
    from lazarus.data.tokenize import TokenizedPreference
    from lazarus.runtime.build import build_trainer
    from lazarus.training.dpo import collate_preferences, completion_logprobs

    # given a DPO trainer on a LoRA micro model whose adapters change the policy, and pairs whose prompts are
    # 1, 5, 13 and 20 tokens long, with chosen and rejected completions of other lengths
    trainer = build_trainer(make_config("dpo", "lora.enabled=true", f"dpo.loss_type={loss_type}"))
    for i, (_, m) in enumerate(trainer.model.named_modules()):
        if hasattr(m, "lora_b"):
            m.lora_b = 0.05 * mx.random.normal(m.lora_b.shape, key=mx.random.key(i))
    pairs = [TokenizedPreference(list(range(7, 7 + n)), list(range(40, 40 + c)), list(range(90, 90 + r)))
             for n, c, r in ((1, 3, 9), (5, 12, 2), (13, 6, 6), (20, 1, 17))]
    shared, whole = collate_preferences(pairs, trainer.pad_id, True), collate_preferences(pairs, trainer.pad_id)
    assert trainer.share_prompts and shared.prefix is not None and whole.prefix is None
    assert shared.inputs.shape[1] < whole.inputs.shape[1]  # each row runs its completion, not its prompt

    # when each completion's logprob is taken through the shared prompts, and as defined: the sum of its
    # tokens' log-softmax from the full logits of whole rows
    through_shared = sequence_logprobs(completion_logprobs(trainer.model, shared), shared.mask)
    logits = trainer.model(whole.inputs)[:, -whole.targets.shape[1]:]
    defined = sequence_logprobs(token_logprobs(logits, whole.targets), whole.mask)
    # and the loss and its gradients through the shared prompts and on whole rows
    running = mx.array([0.0, 0.0])

    def value_and_grad(batch):
        ref = trainer.reference_logprobs(batch)
        loss = lambda model: trainer.loss(model, *batch[:3], ref, running, batch.prefix)[0]  # noqa: E731
        return nn.value_and_grad(trainer.model, loss)(trainer.model)

    (shared_loss, shared_grads), (whole_loss, whole_grads) = value_and_grad(shared), value_and_grad(whole)

    # then they agree to float rounding
    assert mx.allclose(through_shared, defined, atol=1e-4, rtol=1e-5)
    assert shared_loss.item() == pytest.approx(whole_loss.item(), rel=1e-5, abs=1e-6)
    for (name, a), (_, b) in zip(tree_flatten(shared_grads), tree_flatten(whole_grads)):
        assert mx.allclose(a, b, atol=1e-5, rtol=1e-4), name
    assert any(mx.abs(g).max().item() > 0 for _, g in tree_flatten(shared_grads))


def test_dpo_on_a_family_whose_head_it_does_not_know_runs_whole_rows_through_the_models_own_forward(
        make_config, micro_model_dir):
    from mlx_lm.models import qwen3

    from lazarus.algorithms.logprobs import sequence_logprobs, token_logprobs
    from lazarus.data.tokenize import TokenizedPreference
    from lazarus.training.dpo import DPOTrainer, completion_logprobs

    # given a random-init Qwen3 (a family outside PLAIN_HEAD_FAMILIES) with LoRA adapters, and two pairs
    _, tokenizer = load(micro_model_dir)
    model = qwen3.Model(qwen3.ModelArgs(
        model_type="qwen3", hidden_size=32, num_hidden_layers=2, intermediate_size=64, num_attention_heads=4,
        rms_norm_eps=1e-5, vocab_size=len(tokenizer.vocab), num_key_value_heads=2, max_position_embeddings=256,
        head_dim=8, tie_word_embeddings=True, rope_theta=10000.0))
    apply_lora(model, rank=4)
    pairs = [TokenizedPreference([5, 6, 7], [40, 41], [90, 91, 92]), TokenizedPreference([8, 9], [42], [93, 94])]

    # when a DPO trainer is built on it and takes the completions' logprobs
    trainer = DPOTrainer(make_config("dpo", "lora.enabled=true"), model, tokenizer, pairs)
    batch = trainer.collate(pairs)
    logprobs = sequence_logprobs(completion_logprobs(model, batch), batch.mask)

    # then the prompts are not shared, and the logprobs are those of the model's own full logits
    assert not trainer.share_prompts and batch.prefix is None
    defined = sequence_logprobs(token_logprobs(model(batch.inputs)[:, -batch.targets.shape[1]:], batch.targets),
                                batch.mask)
    assert mx.allclose(logprobs, defined, atol=1e-5)
