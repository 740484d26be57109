"""The PPO critic: a value head on the policy's last hidden states.

`hidden_states(model, inputs)` runs an mlx-lm model (any family, and LazyFox, whose `Model` has no
`.model` backbone) up to its final norm, before the LM head. `ValueHead` maps each hidden state to a
scalar, so `values(model, head, input_ids)` is `[B, T]`: the value of the state after each token.
`PolicyWithValue` puts both in one module, so a single forward pass gives logits and values and one
`nn.value_and_grad` covers policy and critic (freeze the policy to train the head alone).
A reward model is the same module read at one position: `collate_scored` right-pads prompt +
completion rows and `last_token_values` takes the head's value at each row's last token.
"""

from __future__ import annotations

from lazarus.errors import LazarusError
from pathlib import Path

import mlx.core as mx
from mlx import nn

from lazarus.models.io import save_safetensors

VALUE_HEAD_FILE = "value_head.safetensors"  # the head's file in a reward-model directory (`lazarus train rm`)
REWARD_MODEL_FILE = "reward_model.json"  # and how its values become one score ({"pooling": "last" | "mean"})

#: Families whose LM head is `lm_head` or the tied embedding, optionally divided by `logits_scaling`.
#: `logits_from_hidden` refuses the others rather than guess (some add softcapping or extra norms).
PLAIN_HEAD_FAMILIES = ("llama", "mistral", "gemma", "starcoder2", "granite", "qwen2", "lazyfox")


class ValueHeadError(LazarusError, ValueError):
    """A value-head file that does not fit; the message names the file and tensor."""


class ValueHead(nn.Module):
    """A linear map from a hidden state to one scalar value, initialised small so early values are ~0.

    Computed in float32 whatever the policy's dtype, since advantages are differences of values.
    """

    def __init__(self, hidden_size: int, init_std: float = 0.01):
        super().__init__()
        if hidden_size <= 0:
            raise ValueError(f"value head hidden_size must be positive, got {hidden_size}")
        self.weight = mx.random.normal((1, hidden_size)) * init_std
        self.bias = mx.zeros((1,))

    @property
    def hidden_size(self) -> int:
        return self.weight.shape[1]

    def __call__(self, hidden: mx.array) -> mx.array:
        """`[..., hidden_size]` -> `[...]`."""
        return (hidden.astype(mx.float32) @ self.weight.T + self.bias).squeeze(-1)


def _backbone(model: nn.Module) -> nn.Module:
    """The module holding `embed_tokens`/`layers`/`norm`: `model.model` for mlx-lm families, else `model`."""
    return model["model"] if "model" in model and isinstance(model["model"], nn.Module) else model


def hidden_states(model: nn.Module, inputs: mx.array, cache=None) -> mx.array:
    """The last hidden states `[B, T, hidden]` of `model` on `inputs` (after the final norm, before the LM head).

    `cache` is the model's KV cache (as from `mlx_lm.models.cache.make_prompt_cache`), updated in place.
    """
    backbone = _backbone(model)
    if backbone is not model:
        return backbone(inputs, cache)
    # LazyFox keeps its blocks on the top-level Model; run them without the head.
    from mlx_lm.models.base import create_attention_mask

    h = model.embed_tokens(inputs)
    cache = [None] * len(model.layers) if cache is None else cache
    mask = create_attention_mask(h, cache[0])
    for layer, layer_cache in zip(model.layers, cache):
        h = layer(h, mask, layer_cache)
    return model.norm(h)


def head_is_known(model: nn.Module) -> bool:
    """Whether `logits_from_hidden` knows `model`'s LM head (its family is in `PLAIN_HEAD_FAMILIES`)."""
    return _model_type(model) in PLAIN_HEAD_FAMILIES


def _model_type(model: nn.Module) -> str | None:
    return getattr(model, "model_type", None) or getattr(getattr(model, "args", None), "model_type", None)


def logits_from_hidden(model: nn.Module, hidden: mx.array) -> mx.array:
    """Apply `model`'s LM head to `hidden_states(model, ...)`: equal to `model(inputs)`."""
    model_type = _model_type(model)
    if model_type not in PLAIN_HEAD_FAMILIES:
        raise ValueError(f"model_type {model_type!r}: its LM head is not known to be plain "
                         f"(supported: {', '.join(PLAIN_HEAD_FAMILIES)})")
    if "lm_head" in model:
        logits = model.lm_head(hidden)
    else:
        logits = _backbone(model).embed_tokens.as_linear(hidden)
    scaling = getattr(model, "logits_scaling", None)  # granite divides its logits
    return logits / scaling if scaling is not None else logits


def values(model: nn.Module, value_head: ValueHead, input_ids: mx.array, cache=None) -> mx.array:
    """Per-token values `[B, T]` of `input_ids` under `model`'s hidden states."""
    return value_head(hidden_states(model, input_ids, cache))


def hidden_size(model: nn.Module) -> int:
    return int(model.args.hidden_size)


class PolicyWithValue(nn.Module):
    """Policy and value head as one module: `(logits, values) = policy_with_value(inputs)` in one pass."""

    def __init__(self, policy: nn.Module, value_head: ValueHead | None = None):
        super().__init__()
        self.policy = policy
        self.value_head = value_head if value_head is not None else ValueHead(hidden_size(policy))
        if self.value_head.hidden_size != hidden_size(policy):
            raise ValueError(f"value head hidden_size {self.value_head.hidden_size} does not match the "
                             f"policy's hidden_size {hidden_size(policy)}")

    def __call__(self, inputs: mx.array, cache=None) -> tuple[mx.array, mx.array]:
        hidden = hidden_states(self.policy, inputs, cache)
        return logits_from_hidden(self.policy, hidden), self.value_head(hidden)


def save_value_head(value_head: ValueHead, path: str | Path) -> Path:
    """Write the head to a `.safetensors` file (atomically); return the path."""
    path = Path(path)
    save_safetensors(path, {"weight": value_head.weight, "bias": value_head.bias},
                     metadata={"format": "lazarus.value_head", "hidden_size": str(value_head.hidden_size)})
    return path


def load_value_head(path: str | Path) -> ValueHead:
    """Read a head written by `save_value_head`."""
    path = Path(path)
    if not path.is_file():
        raise ValueHeadError(f"value head file {path} does not exist")
    weights = mx.load(str(path))
    for name in ("weight", "bias"):
        if name not in weights:
            raise ValueHeadError(f"{path}: tensor {name!r} is missing")
    weight, bias = weights["weight"], weights["bias"]
    if weight.ndim != 2 or weight.shape[0] != 1:
        raise ValueHeadError(f"{path}: tensor 'weight' has shape {tuple(weight.shape)}, expected (1, hidden_size)")
    if bias.shape != (1,):
        raise ValueHeadError(f"{path}: tensor 'bias' has shape {tuple(bias.shape)}, expected (1,)")
    head = ValueHead(weight.shape[1])
    head.update({"weight": weight, "bias": bias})
    return head


def collate_scored(sequences: list[tuple[list[int], list[int]]], pad_id: int, multiple: int = 16):
    """(prompt, completion) id pairs -> (ids [N,W], last-token index [N], completion target mask [N,W]).

    `ids` is prompt + completion, right-padded to a multiple of `multiple` (few distinct shapes for
    compiled steps); `last` indexes each row's final completion token, where a reward model reads its
    score; the mask marks positions t whose next token ids[t+1] is a completion token.
    """
    import numpy as np

    if not sequences:
        raise ValueError("collate_scored needs at least one (prompt, completion) pair")
    longest = max(len(p) + len(c) for p, c in sequences)
    width = ((longest + multiple - 1) // multiple) * multiple
    ids = np.full((len(sequences), width), pad_id, np.int32)
    mask = np.zeros((len(sequences), width), np.float32)
    last = np.zeros(len(sequences), np.int32)
    for i, (prompt, completion) in enumerate(sequences):
        if not completion:
            raise ValueError(f"row {i}: empty completion (nothing to score)")
        full = list(prompt) + list(completion)
        ids[i, : len(full)] = full
        mask[i, max(len(prompt) - 1, 0): len(full) - 1] = 1.0
        last[i] = len(full) - 1
    return mx.array(ids), mx.array(last), mx.array(mask)


REWARD_POOLINGS = ("last", "mean")


def last_token_values(model: PolicyWithValue, ids: mx.array, last: mx.array, mask: mx.array | None = None,
                      pooling: str = "last") -> tuple[mx.array, mx.array]:
    """(one score per row [N], logits [N,W,V]) in one forward pass.

    pooling "last": the value at each row's `last` position (InstructGPT, TRL's sequence classifier);
    "mean": the mean value over the row's completion tokens (positions t with mask[t-1] = 1, `mask`
    as `collate_scored` returns it), where every completion token adds its evidence.
    """
    if pooling not in REWARD_POOLINGS:
        raise ValueError(f"pooling must be one of {REWARD_POOLINGS}, got {pooling!r}")
    logits, values = model(ids)
    if pooling == "last":
        return mx.take_along_axis(values, last[:, None].astype(mx.int32), axis=1).squeeze(1), logits
    if mask is None:
        raise ValueError("pooling 'mean' needs the completion mask")
    completion = mx.concatenate([mx.zeros_like(mask[:, :1]), mask[:, :-1]], axis=1)
    return (values * completion).sum(axis=1) / mx.maximum(completion.sum(axis=1), 1.0), logits
