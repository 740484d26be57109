"""The Bradley-Terry reward-model trainer, its export, and the batched reward function that reads it,
on a real micro model; and `lazarus train rm` as a real subprocess."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lazarus.config import load_config
from lazarus.data.io import write_jsonl
from lazarus.data.records import read_preference
from lazarus.data.tokenize import encode_preference
from lazarus.env.reward_model import RewardModelScorer, RewardSpecError, resolve_reward_specs
from lazarus.models.value_head import VALUE_HEAD_FILE, collate_scored, last_token_values
from lazarus.runtime.local import prepare_model, save_model_dir
from lazarus.training.rm import RewardModelTrainer, export_reward_model

WORKTREE = Path(__file__).resolve().parents[3]


def polite_pairs(n, seed):
    """A preference any model can learn: the chosen answer says 'yes', the rejected one 'no'."""
    rng = np.random.default_rng(seed)
    return [{"prompt": f"Is {int(a)} a number?", "chosen": "Answer: yes", "rejected": "Answer: no"}
            for a in rng.integers(0, 1000, size=n)]


@pytest.fixture
def polite_data(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", polite_pairs(32, 0))
    write_jsonl(tmp_path / "eval.jsonl", polite_pairs(8, 1))
    return tmp_path


def rm_config(micro_model_dir, data_dir, run_dir, *overrides):
    return load_config(None, [
        "algorithm=rm", f"model.path={micro_model_dir}", f"data.train={data_dir}/train.jsonl",
        f"data.eval={data_dir}/eval.jsonl", f"training.run_dir={run_dir}", "training.progress=false",
        "training.batch_size=8", "training.max_steps=25", "optim.learning_rate=0.003", *overrides])


def trainer_for(cfg):
    model, tokenizer = prepare_model(cfg)

    def pairs(path):
        return [encode_preference(r, tokenizer, max_length=cfg.data.max_length) for r in read_preference(path)]

    return RewardModelTrainer(cfg, model, tokenizer, pairs(cfg.data.train), pairs(cfg.data.eval))


def test_a_reward_model_learns_a_learnable_preference_to_full_held_out_accuracy(micro_model_dir, polite_data,
                                                                                 tmp_path):
    trainer = trainer_for(rm_config(micro_model_dir, polite_data, tmp_path / "run"))
    before = trainer.evaluate()["eval_reward_margin"]

    result = trainer.train()

    assert abs(before) < 0.1  # a fresh head scores everything about alike
    assert result["eval_pairwise_accuracy"] == 1.0
    assert result["eval_reward_margin"] > 0.5


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_the_exported_reward_model_scores_in_batches_exactly_as_the_trainer_did(micro_model_dir, polite_data,
                                                                                 tmp_path, pooling):
    # given a trained reward model exported to a directory
    cfg = rm_config(micro_model_dir, polite_data, tmp_path / "run", "training.max_steps=3", f"rm.pooling={pooling}")
    trainer = trainer_for(cfg)
    trainer.train()
    out = export_reward_model(trainer.model, Path(cfg.model.path), tmp_path / "run" / "reward_model", save_model_dir,
                              pooling=pooling)
    assert (out / VALUE_HEAD_FILE).is_file()
    # when the reward function scores prompts and completions of different lengths, 3 at a time and 1 at a time
    prompts = ["Is 5 a number?", "Is 12345 a number?", "Is 7 a number?", "Is 99 a number?"]
    completions = ["Answer: yes", "Answer: no", "Answer: yes, it is a number", "no"]
    batched = RewardModelScorer(out, batch_size=3)
    single = RewardModelScorer(out, batch_size=1)
    scores = batched(prompts, completions)
    # then padding does not change a score, it takes ceil(4 / 3) forward passes, and it equals the trainer's value
    assert np.allclose(scores, single(prompts, completions), atol=1e-5)
    assert batched.forward_passes == 2 and single.forward_passes == 4
    assert batched.pooling == pooling
    ids, last, mask = collate_scored(batched.sequences(prompts[:1], completions[:1]), trainer.pad_id)
    expected, _ = last_token_values(trainer.model, ids, last, mask, pooling)
    assert scores[0] == pytest.approx(expected.item(), abs=1e-5)


def test_mean_pooling_averages_the_values_of_the_completion_tokens_only(micro_model_dir):
    from lazarus.models.load import load
    from lazarus.models.value_head import PolicyWithValue

    model = PolicyWithValue(load(micro_model_dir)[0])
    ids, last, mask = collate_scored([([5, 6, 7], [8, 9]), ([5], [8, 9, 10, 11])], pad_id=0)

    pooled, _ = last_token_values(model, ids, last, mask, "mean")

    _, values = model(ids)
    expected = [np.array(values[0, 3:5]).mean(), np.array(values[1, 1:5]).mean()]
    assert np.allclose(np.array(pooled), expected, atol=1e-6)


def test_reward_specs_resolve_functions_models_and_per_task_rewards(micro_model_dir, polite_data, tmp_path):
    cfg = rm_config(micro_model_dir, polite_data, tmp_path / "run", "training.max_steps=1")
    trainer = trainer_for(cfg)
    trainer.train()
    out = export_reward_model(trainer.model, Path(cfg.model.path), tmp_path / "rm", save_model_dir)
    specs = load_config(None, [
        "data.tasks=[{name: math, train: a.jsonl}, {name: chat, train: b.jsonl}]",
        f"rl.rewards=[{{function: accuracy, task: math}}, {{model: {out}, weight: 0.5}}]"]).rl.rewards

    functions = resolve_reward_specs(specs)

    assert [(f.name, f.weight) for f in functions] == [("accuracy/math", 1.0), ("reward_model_1", 0.5)]
    accuracy = functions[0].fn(["What is 1 + 1?", "hi"], ["Answer: 2", "Answer: 2"], answer=["2", None],
                               task=["math", "chat"])
    assert accuracy == [1.0, None]  # the chat row is not scored by the math reward
    assert len(functions[1].fn(["hi"], ["there"])) == 1


@pytest.mark.parametrize("override, message", [
    ("rl.rewards=[{function: nope}]", r"rl.rewards.0.function"),
    ("rl.rewards=[{function: accuracy}, {model: /no/such/dir}]", r"rl.rewards.1.model: reward model /no/such/dir"),
])
def test_a_bad_reward_spec_is_an_error_naming_the_entry(override, message):
    with pytest.raises(RewardSpecError, match=message):
        resolve_reward_specs(load_config(None, [override]).rl.rewards)


def test_a_reward_spec_needs_exactly_one_of_function_and_model():
    from lazarus.config import ConfigError

    with pytest.raises(ConfigError, match="exactly one of"):
        load_config(None, ["rl.rewards=[{function: accuracy, model: somewhere}]"])


def test_lazarus_train_rm_prints_the_held_out_pairwise_accuracy_last(micro_model_dir, polite_data, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(WORKTREE)}
    command = [sys.executable, "-m", "lazarus.cli.main", "train", "rm", "--set", "algorithm=rm",
               "--set", f"model.path={micro_model_dir}", "--set", f"data.train={polite_data}/train.jsonl",
               "--set", f"data.eval={polite_data}/eval.jsonl", "--set", f"training.run_dir={tmp_path}/run",
               "--set", "training.max_steps=2", "--set", "training.progress=false"]

    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)

    assert done.returncode == 0, done.stderr
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("held-out pairwise accuracy ")
    assert 0.0 <= float(last.split()[-1]) <= 1.0
    assert (tmp_path / "run" / "reward_model" / VALUE_HEAD_FILE).is_file()
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("eval_pairwise_accuracy" in m for m in logged)
