"""A small math dataset and config factory shared by the trainer tests."""

import pytest

from lazarus.config import load_config
from lazarus.data.math import write_math_dataset


@pytest.fixture(scope="session")
def math_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("math")
    write_math_dataset(out, n_train=64, n_eval=16, kinds=["arithmetic"], difficulty=1, seed=0)
    return out


@pytest.fixture
def make_config(micro_model_dir, math_dir, tmp_path):
    def make(algorithm, *overrides, run="run"):
        files = {"sft": "sft", "dpo": "preference", "grpo": "rl", "ppo": "rl"}[algorithm]
        return load_config(None, [
            f"algorithm={algorithm}", f"model.path={micro_model_dir}",
            f"data.train={math_dir}/{files}_train.jsonl", f"data.eval={math_dir}/{files}_eval.jsonl",
            f"training.run_dir={tmp_path / run}", "training.progress=false", "training.batch_size=4",
            "training.max_steps=4", "generation.num_generations=4", "generation.max_new_tokens=8",
            "eval.num_prompts=4", "optim.learning_rate=0.001", *overrides])
    return make
