"""The local launcher: every role in this process. Builds model, data, rewards from a `Config` and runs
the trainer for `config.algorithm` (SFT, DPO, GRPO/RLOO/REINFORCE++, PPO).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import mlx.nn as nn

from lazarus.config import Config, ConfigError


def prepare_model(cfg: Config, for_reference: bool = False):
    """(model, tokenizer) per `cfg.model` and `cfg.lora`: init if asked, load, quantize, LoRA/adapter."""
    from lazarus.models.load import load
    from lazarus.models.lora import apply_lora, fuse_lora, load_adapter

    path = Path(cfg.model.path)
    if not path.exists():
        if not cfg.model.init_arch:
            raise ConfigError(f"model.path: {path} does not exist (set model.init_arch to create a random-init model)")
        from lazarus.models.tiny import init_model

        init_model(cfg.model.init_arch, cfg.model.init_size, path, seed=cfg.training.seed)
    model, tokenizer = load(path)
    if cfg.model.quantize_bits:
        from lazarus.models.quantize import quantize

        quantize(model, bits=cfg.model.quantize_bits, group_size=cfg.model.quantize_group_size)
    if for_reference:
        if cfg.model.adapter:
            load_adapter(model, cfg.model.adapter)
            fuse_lora(model)
        model.freeze()
        return model, tokenizer
    if cfg.lora.enabled:
        if cfg.model.adapter:
            load_adapter(model, cfg.model.adapter)  # continue training the given adapter
        else:
            lo = cfg.lora
            apply_lora(model, rank=lo.rank, alpha=lo.alpha, dropout=lo.dropout, target_modules=lo.target_modules,
                       num_layers=lo.num_layers)
    elif cfg.model.adapter:
        load_adapter(model, cfg.model.adapter)
        fuse_lora(model)  # full fine-tuning starts from base + adapter merged
    model.train()
    return model, tokenizer


def needs_reference(cfg: Config) -> bool:
    """A frozen copy is needed only for full fine-tuning with a KL/DPO reference (LoRA turns adapters off)."""
    if cfg.lora.enabled:
        return False
    if cfg.algorithm == "dpo":
        return cfg.dpo.loss_type not in ("simpo", "orpo")
    return cfg.algorithm in ("grpo", "ppo") and cfg.rl.beta > 0


def ensure_data(cfg: Config) -> None:
    """Write the generated math dataset when `data.generate_math` is set and `data.train` is missing."""
    if cfg.data.train is None:
        raise ConfigError("data.train: no training data given")
    train = Path(cfg.data.train)
    spec = cfg.data.generate_math
    if train.exists() or spec is None:
        if not train.exists():
            raise ConfigError(f"data.train: {train} does not exist")
        return
    from lazarus.data.math import write_math_dataset, write_math_levels

    try:
        if isinstance(spec.difficulty, list):
            write_math_levels(train.parent, n_train=spec.train, n_eval=spec.eval, levels=spec.difficulty,
                              kinds=spec.kinds, seed=spec.seed, answer_only=spec.answer_only)
        else:
            write_math_dataset(train.parent, n_train=spec.train, n_eval=spec.eval, kinds=spec.kinds,
                               difficulty=spec.difficulty, seed=spec.seed, answer_only=spec.answer_only)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"data.generate_math: {e}") from None
    if not train.exists():
        raise ConfigError(f"data.train: {train} is not one of the files the math generator writes "
                          "(sft_train.jsonl, preference_train.jsonl, rl_train.jsonl)")


def resolve_rewards(cfg: Config):
    from lazarus.env.rewards import resolve_reward_function
    from lazarus.env.rewards import RewardFunction

    functions = []
    for i, spec in enumerate(cfg.rl.rewards):
        try:
            fn = resolve_reward_function(spec.function)
        except ValueError as e:
            raise ConfigError(f"rl.rewards.{i}.function: {e}") from None
        name = spec.function.split(":")[-1].removesuffix("_reward")
        functions.append(RewardFunction(name, fn, spec.weight))
    return functions


def build_trainer(cfg: Config):
    ensure_data(cfg)
    model, tokenizer = prepare_model(cfg)
    reference = prepare_model(cfg, for_reference=True)[0] if needs_reference(cfg) else None
    d = cfg.data
    if cfg.algorithm == "sft":
        from lazarus.data.batching import load_npz
        from lazarus.data.records import read_sft
        from lazarus.data.tokenize import encode_sft
        from lazarus.training.sft import SFTTrainer

        def tokenized(path):
            if path is None:
                return []
            if str(path).endswith(".npz"):
                return load_npz(path)
            return [encode_sft(r, tokenizer, mask_prompt=d.mask_prompt, max_length=d.max_length,
                               use_chat_template=d.use_chat_template) for r in read_sft(path)]

        train = tokenized(d.train)
        if d.pack:
            from lazarus.data.batching import pack_examples

            train = pack_examples(train, d.max_length)
        return SFTTrainer(cfg, model, tokenizer, train, tokenized(d.eval))
    if cfg.algorithm == "dpo":
        from lazarus.data.records import read_preference
        from lazarus.data.tokenize import encode_preference
        from lazarus.training.dpo import DPOTrainer

        def pairs(path):
            return [] if path is None else [encode_preference(r, tokenizer, max_length=d.max_length,
                                                              use_chat_template=d.use_chat_template)
                                            for r in read_preference(path)]

        return DPOTrainer(cfg, model, tokenizer, pairs(d.train), pairs(d.eval), reference=reference)
    from lazarus.data.records import read_prompts

    prompts = read_prompts(d.train)
    eval_prompts = read_prompts(d.eval) if d.eval else []
    rewards = resolve_rewards(cfg)
    if cfg.algorithm == "ppo":
        from lazarus.training.ppo import PPOTrainer

        return PPOTrainer(cfg, model, tokenizer, prompts, rewards, eval_prompts, reference=reference)
    from lazarus.training.rl import RLTrainer

    return RLTrainer(cfg, model, tokenizer, prompts, rewards, eval_prompts, reference=reference)


def run_training(cfg: Config, resume: str | Path | None = None) -> dict:
    """Train per `cfg`; export the result to `run_dir/adapter` (LoRA) or `run_dir/model` (full)."""
    trainer = build_trainer(cfg)
    result = trainer.train(resume=resume)
    export(trainer.model, cfg, Path(cfg.training.run_dir))
    return result


def export(model: nn.Module, cfg: Config, run_dir: Path) -> Path:
    """The trained policy in a form `lazarus infer` and `mlx_lm.load` read."""
    from lazarus.models.lora import has_lora, save_adapter

    if has_lora(model):
        return save_adapter(model, run_dir / "adapter", metadata={"base_model": cfg.model.path})
    return save_model_dir(model, Path(cfg.model.path), run_dir / "model")


def save_model_dir(model: nn.Module, source: Path, out: Path) -> Path:
    """Weights of `model` plus config and tokenizer files copied from `source`, written atomically."""
    from mlx.utils import tree_flatten

    from lazarus.models.io import atomic_dir, save_safetensors

    if not source.is_dir():
        raise ConfigError(f"model.path: exporting full weights needs a model directory, not {source}")
    with atomic_dir(out) as tmp:
        for f in source.iterdir():
            if f.is_file() and not f.name.startswith("model") and f.suffix in (".json", ".txt", ".model", ".jinja"):
                shutil.copy2(f, tmp / f.name)
        save_safetensors(tmp / "model.safetensors", dict(tree_flatten(model.parameters())), {"format": "mlx"})
    return out


def run_eval(model_path: str, adapter: str | None, data: str, reward: str, num_prompts: int,
             max_new_tokens: int, temperature: float = 0.0, use_chat_template: bool = True) -> dict:
    from lazarus.data.records import read_prompts
    from lazarus.env.rewards import resolve_reward_function
    from lazarus.inference.engine import Engine
    from lazarus.models.load import load
    from lazarus.training.evaluate import evaluate

    model, tokenizer = load(model_path, adapter=adapter)
    records = read_prompts(data)[:num_prompts]
    try:
        fn = resolve_reward_function(reward)
    except ValueError as e:
        raise ConfigError(f"--reward: {e}") from None
    return evaluate(Engine(model, tokenizer), tokenizer, records, fn, max_new_tokens=max_new_tokens,
                    temperature=temperature, use_chat_template=use_chat_template)
