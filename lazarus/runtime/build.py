"""What each role is built from, shared by every launcher: model (for a learner or an actor), data, rewards,
and the learner or trainer for `config.algorithm`.

A learner's model is in training mode with LoRA applied as the config says; an actor's is the same
architecture in eval mode (dropout off: the ratio is exactly 1 on-policy), with no optimizer and no run
directory. Nothing here knows which launcher or transport runs the roles.
"""

from __future__ import annotations

from pathlib import Path

from lazarus.config import Config, ConfigError


def prepare_model(cfg: Config, for_reference: bool = False, for_actor: bool = False):
    """(model, tokenizer) per `cfg.model` and `cfg.lora`: init if asked, load, quantize, LoRA/adapter.

    `for_actor`: the same architecture (LoRA applied as the learner's, so its adapters can be loaded) in
    eval mode; `for_reference`: frozen, with a given adapter fused in.
    """
    from lazarus.models.load import load, resolve_model_path
    from lazarus.models.lora import apply_lora, fuse_lora, load_adapter

    path = Path(cfg.model.path) if cfg.model.init_arch else resolve_model_path(cfg.model.path)
    if not path.exists():
        if not cfg.model.init_arch:
            raise ConfigError(f"model.path: {path} does not exist (set model.init_arch to create a random-init model)")
        from lazarus.models.tiny import init_model

        init_model(cfg.model.init_arch, cfg.model.init_size, path, seed=cfg.training.seed)
    model, tokenizer = load(path, dequantize=cfg.model.dequantize)
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
    if for_actor:
        model.freeze()
        model.eval()
    else:
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
    if cfg.data.tasks:  # multi-task: each task's files must exist (the generator writes only data.train's)
        for i, task in enumerate(cfg.data.tasks):
            for split, path in (("train", task.train), ("eval", task.eval)):
                if path is not None and not Path(path).exists():
                    raise ConfigError(f"data.tasks.{i}.{split}: {path} does not exist")
        return
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
                               difficulty=spec.difficulty, seed=spec.seed, answer_only=spec.answer_only,
                               instruction=spec.instruction)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"data.generate_math: {e}") from None
    if not train.exists():
        raise ConfigError(f"data.train: {train} is not one of the files the math generator writes "
                          "(sft_train.jsonl, preference_train.jsonl, rl_train.jsonl)")


def resolve_rewards(cfg: Config):
    """`rl.rewards` as RewardFunctions: built-ins, `module:function`, and trained reward models (loaded once)."""
    from lazarus.env.reward_model import resolve_reward_specs

    return resolve_reward_specs(cfg.rl.rewards, cfg.data.use_chat_template)


def build_trainer(cfg: Config):
    """The SFT or DPO trainer (one process, no runtime): data, model, reference."""
    import mlx.core as mx

    from lazarus.data.tokenize import check_special_tokens

    ensure_data(cfg)
    mx.random.seed(cfg.training.seed)  # LoRA init depends only on the seed
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
            records = read_sft(path)
            check_special_tokens(records, tokenizer, d.special_tokens_in_text, str(path))
            return [encode_sft(r, tokenizer, mask_prompt=d.mask_prompt, max_length=d.max_length,
                               use_chat_template=d.use_chat_template) for r in records]

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
            if path is None:
                return []
            records = read_preference(path)
            check_special_tokens(records, tokenizer, d.special_tokens_in_text, str(path))
            return [encode_preference(r, tokenizer, max_length=d.max_length, use_chat_template=d.use_chat_template)
                    for r in records]

        return DPOTrainer(cfg, model, tokenizer, pairs(d.train), pairs(d.eval), reference=reference)
    raise ConfigError(f"algorithm: {cfg.algorithm} is trained by the RL runtime (build_learner), not build_trainer")


def build_learner(cfg: Config, model=None, tokenizer=None):
    """The RL learner for `cfg.algorithm` (grpo or ppo) with its reference and held-out prompts."""
    import mlx.core as mx

    from lazarus.data.records import read_prompts

    mx.random.seed(cfg.training.seed)  # LoRA and value-head init depend only on the seed
    if model is None:
        model, tokenizer = prepare_model(cfg)
    reference = prepare_model(cfg, for_reference=True)[0] if needs_reference(cfg) else None
    if cfg.data.tasks:
        eval_prompts, eval_source = rl_task_prompts(cfg, "eval"), "data.tasks eval"
    else:
        eval_prompts, eval_source = read_prompts(cfg.data.eval) if cfg.data.eval else [], str(cfg.data.eval)
    rewards = resolve_rewards(cfg)
    if eval_prompts:
        from lazarus.env.rewards import check_reward_columns, reward_name

        check_reward_columns([rf for rf in rewards if rf.name == reward_name(cfg.eval.reward)], eval_prompts,
                             eval_source)
    if cfg.algorithm == "ppo":
        from lazarus.training.ppo import PPOLearner

        return PPOLearner(cfg, model, tokenizer, reference, eval_prompts, rewards)
    from lazarus.training.rl import RLLearner

    return RLLearner(cfg, model, tokenizer, reference, eval_prompts, rewards)


def read_rl_prompts(cfg: Config, tokenizer):
    """(records, token ids) of the RL prompt set, templated as the run says; checked against the rewards."""
    from lazarus.data.records import read_prompts
    from lazarus.data.tokenize import check_special_tokens, encode_prompt
    from lazarus.env.rewards import check_reward_columns

    source = "data.tasks" if cfg.data.tasks else str(cfg.data.train)
    records = rl_task_prompts(cfg, "train") if cfg.data.tasks else read_prompts(cfg.data.train)
    if not records:
        raise ConfigError(f"data.train: {cfg.data.train} holds no prompts")
    check_reward_columns(resolve_rewards(cfg), records, source)
    check_special_tokens(records, tokenizer, cfg.data.special_tokens_in_text, source)
    ids = [encode_prompt(r.prompt, tokenizer, use_chat_template=cfg.data.use_chat_template) for r in records]
    return records, ids


def rl_task_prompts(cfg: Config, split: str) -> list:
    """Multi-task prompts of `split` (train: task by task; eval: interleaved, so that the first
    eval.num_prompts cover every task), each tagged with its task in the `task` column."""
    from itertools import chain, zip_longest

    from lazarus.data.curriculum import load_tasks

    train, held_out, _ = load_tasks(cfg.data.tasks, seed=cfg.training.seed)
    if split == "train":
        return list(chain.from_iterable(train.values()))
    return [r for row in zip_longest(*held_out.values()) for r in row if r is not None]
