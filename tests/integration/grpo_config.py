"""A small GRPO run's config file for the runtime tests (micro model, generated one-step arithmetic prompts)."""

from __future__ import annotations

from pathlib import Path

import yaml


def config_writer(tmp_path: Path, model_dir: Path, steps: int, **defaults: dict):
    """`make(**sections) -> config path`: the base config, then `defaults`, then `sections`, per section."""
    from lazarus.data.math import write_math_dataset

    write_math_dataset(tmp_path / "data", n_train=64, n_eval=8, kinds=["arithmetic"], difficulty=1, seed=0)

    def make(**sections: dict) -> Path:
        cfg = {
            "algorithm": "grpo",
            "model": {"path": str(model_dir)},
            "data": {"train": str(tmp_path / "data/rl_train.jsonl"), "eval": str(tmp_path / "data/rl_eval.jsonl")},
            "optim": {"learning_rate": 0.003},
            "training": {"max_steps": steps, "batch_size": 8, "run_dir": str(tmp_path / "run"), "progress": False},
            "generation": {"num_generations": 8, "max_new_tokens": 4},
            "rl": {"rewards": [{"function": "runtime_rewards:starts_with_a_digit"}]},
            "eval": {"num_prompts": 4, "reward": "starts_with_a_digit"},
            "runtime": {"heartbeat_s": 0.3, "lease_s": 3.0},
        }
        for overrides in (defaults, sections):
            for section, values in overrides.items():
                cfg.setdefault(section, {}).update(values)
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    return make
