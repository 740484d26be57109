"""Random-init HF-format models and a byte-level BPE tokenizer, for tests and demos.

`init_model(arch, size, out)` writes `config.json`, `model.safetensors`, `tokenizer.json`,
`tokenizer_config.json` (with a ChatML chat template) and `generation_config.json` into `out`; plain
`mlx_lm.load(out)` loads the result. The tokenizer is trained with `tokenizers` on text this module
generates (arithmetic, word problems, short sentences), splitting digits one by one so that
arithmetic is learnable by very small models. Nothing reaches a hub.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from lazarus.models.io import atomic_dir, save_safetensors, write_json

ARCHITECTURES = ("llama", "mistral", "gemma", "starcoder2", "granite", "qwen2", "lazyfox")

#: Shapes per size. `tiny` is ~1M parameters, `small` ~10M, `micro` is for unit tests.
SIZES: dict[str, dict] = {
    "micro": dict(hidden_size=64, num_hidden_layers=2, intermediate_size=128, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=384),
    "tiny": dict(hidden_size=128, num_hidden_layers=4, intermediate_size=384, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512),
    "small": dict(hidden_size=320, num_hidden_layers=8, intermediate_size=864, num_attention_heads=8,
                  num_key_value_heads=4, vocab_size=1024),
}

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_WORDS = (
    "the a an of to and in is was for on with as at by from it that this be are what how many much "
    "has have had gives buys sells left total each more than less fewer apples pens books coins "
    "cards marbles cookies tickets students boxes red blue green small big first second then now "
    "answer question number sum difference product quotient percent fraction half third quarter "
    "compare which larger smaller equal step think result is the capital city country river paris "
    "france london rome water fire earth sun moon day night year time people model train learn"
).split()


def generated_corpus(n_lines: int = 4000, seed: int = 0) -> list[str]:
    """Text the tokenizer is trained on: arithmetic, chat turns, and sentences from a small lexicon."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n_lines):
        kind = rng.random()
        a, b = rng.randint(0, 999), rng.randint(1, 99)
        if kind < 0.35:
            op = rng.choice("+-*/")
            lines.append(f"What is {a} {op} {b}? The answer is {a} {op} {b} = {rng.randint(0, 9999)}.")
        elif kind < 0.5:
            lines.append(f"<|im_start|>user\nCompute {a}/{b} as a fraction.<|im_end|>\n"
                         f"<|im_start|>assistant\n{a}/{b} = {rng.randint(0, 99)}.{rng.randint(0, 99)}<|im_end|>")
        elif kind < 0.6:
            lines.append(f"{rng.randint(1, 99)}% of {a} is {rng.randint(0, 999)}. Answer: {b}")
        else:
            lines.append(" ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 14))).capitalize() + ".")
    return lines


def train_tokenizer(vocab_size: int, seed: int = 0):
    """A byte-level BPE tokenizer (digits split individually) trained on `generated_corpus`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(generated_corpus(seed=seed), trainer=trainer)
    return tokenizer


def model_config(arch: str, size: str = "tiny", vocab_size: int | None = None, **overrides) -> dict:
    """An HF-style `config.json` for `arch` at `size` (top-level `rope_theta`, as mlx-lm reads it)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown arch {arch!r}: choose one of {', '.join(ARCHITECTURES)}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}: choose one of {', '.join(SIZES)}")
    shape = dict(SIZES[size])
    if vocab_size is not None:
        shape["vocab_size"] = vocab_size
    heads = shape["num_attention_heads"]
    common = dict(
        model_type=arch,
        torch_dtype="float32",
        rope_theta=10000.0,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=SPECIAL_TOKENS.index("<|im_end|>"),
        pad_token_id=SPECIAL_TOKENS.index("<|pad|>"),
        **shape,
    )
    arch_specific = {
        "llama": dict(architectures=["LlamaForCausalLM"], rms_norm_eps=1e-5),
        "mistral": dict(architectures=["MistralForCausalLM"], rms_norm_eps=1e-5),
        "gemma": dict(architectures=["GemmaForCausalLM"], rms_norm_eps=1e-6,
                      head_dim=shape["hidden_size"] // heads),
        "starcoder2": dict(architectures=["Starcoder2ForCausalLM"], norm_epsilon=1e-5),
        "granite": dict(architectures=["GraniteForCausalLM"], rms_norm_eps=1e-5, logits_scaling=1.0,
                        attention_multiplier=(shape["hidden_size"] // heads) ** -0.5,
                        embedding_multiplier=1.0, residual_multiplier=1.0, attention_bias=False,
                        mlp_bias=False),
        "qwen2": dict(architectures=["Qwen2ForCausalLM"], rms_norm_eps=1e-6),
        "lazyfox": dict(architectures=["LazyFoxForCausalLM"], rms_norm_eps=1e-5),
    }[arch]
    return {**common, **arch_specific, **overrides}


def init_model(arch: str = "llama", size: str = "tiny", out: str | Path = "tiny-model", seed: int = 0,
               **overrides) -> Path:
    """Write a random-init model of `arch`/`size` plus tokenizer to `out` (atomically); return the path."""
    from mlx_lm.utils import _get_classes

    import lazarus.models  # noqa: F401  (registers lazyfox with mlx-lm)

    out = Path(out)
    tokenizer = train_tokenizer(SIZES[size]["vocab_size"] if size in SIZES else 512, seed=seed)
    config = model_config(arch, size, vocab_size=tokenizer.get_vocab_size(), **overrides)
    model_class, args_class = _get_classes(config)
    mx.random.seed(seed)
    model = model_class(args_class.from_dict(config))
    model.set_dtype(mx.float32)
    weights = dict(tree_flatten(model.parameters()))
    mx.eval(weights)
    with atomic_dir(out) as tmp:
        save_safetensors(tmp / "model.safetensors", weights, metadata={"format": "mlx"})
        write_json(tmp / "config.json", config)
        tokenizer.save(str(tmp / "tokenizer.json"))
        write_json(tmp / "tokenizer_config.json", {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "chat_template": CHAT_TEMPLATE,
            "bos_token": None,
            "eos_token": "<|im_end|>",
            "pad_token": "<|pad|>",
            "unk_token": None,
            "additional_special_tokens": SPECIAL_TOKENS,
            "model_max_length": config["max_position_embeddings"],
            "clean_up_tokenization_spaces": False,
        })
        write_json(tmp / "special_tokens_map.json", {"eos_token": "<|im_end|>", "pad_token": "<|pad|>"})
        write_json(tmp / "generation_config.json", {"eos_token_id": config["eos_token_id"]})
    return out


def parameter_count(config: dict) -> int:
    """Number of parameters `init_model` would create for `config` (without building weights)."""
    from mlx_lm.utils import _get_classes

    import lazarus.models  # noqa: F401

    model_class, args_class = _get_classes(config)
    model = model_class(args_class.from_dict(config))
    return sum(v.size for _, v in tree_flatten(model.parameters()))


def describe(path: str | Path) -> str:
    config = json.loads((Path(path) / "config.json").read_text())
    return f"{config['model_type']} ({config['num_hidden_layers']} layers, hidden {config['hidden_size']})"
