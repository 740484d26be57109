"""Quantization (MLX affine, 4 and 8 bits), saving for plain mlx_lm, and QLoRA on a quantized base."""

import json

import mlx.core as mx
import mlx.optimizers as optim
import pytest
from mlx import nn
from mlx.utils import tree_flatten
from mlx_lm import load as mlx_lm_load

from lazarus.models.load import load
from lazarus.models.lora import adapter_parameters, apply_lora
from lazarus.models.quantize import quantization_config, quantize, save_quantized
from lazarus.models.tiny import init_model

TOKENS = mx.array([[5, 17, 42, 99, 7, 3, 250, 11, 300, 400]])


def relative_error(approx: mx.array, exact: mx.array) -> float:
    return (mx.linalg.norm(approx - exact) / mx.linalg.norm(exact)).item()


@pytest.fixture(scope="module")
def lazyfox_dir(tmp_path_factory):
    return init_model("lazyfox", "tiny", tmp_path_factory.mktemp("models") / "lazyfox-tiny", seed=0)


@pytest.mark.parametrize("arch_dir", ["tiny_model_dir", "lazyfox_dir"])
@pytest.mark.parametrize("bits, group_size, tolerance", [(8, 64, 0.05), (4, 64, 0.35), (4, 32, 0.35)])
def test_quantized_logits_stay_close_to_the_float_model(request, arch_dir, bits, group_size, tolerance):
    # given a float tiny model and its logits
    model, _ = load(request.getfixturevalue(arch_dir))
    exact = model(TOKENS)
    # when it is quantized
    quantize(model, bits=bits, group_size=group_size)
    approx = model(TOKENS)
    # then every projection is quantized and logits differ by quantization noise only
    # (random-init weights are the worst case for 4 bits; an unrelated model is ~1.4 away)
    q_proj = model.layers[0].self_attn.q_proj
    assert isinstance(q_proj, nn.QuantizedLinear) and (q_proj.bits, q_proj.group_size) == (bits, group_size)
    assert relative_error(approx, exact) < tolerance


def test_more_bits_give_smaller_error(tiny_model_dir):
    errors = {}
    for bits in (4, 8):
        model, _ = load(tiny_model_dir)
        exact = model(TOKENS)
        errors[bits] = relative_error(quantize(model, bits=bits, group_size=64)(TOKENS), exact)
    assert errors[8] < errors[4] / 4


def test_layers_whose_input_dim_does_not_divide_the_group_size_stay_float(micro_model_dir):
    # given the micro llama: hidden 64, MLP intermediate 128
    model, _ = load(micro_model_dir)
    # when quantized with group size 128
    quantize(model, bits=4, group_size=128)
    # then only down_proj (input 128) is quantized; layers reading the 64-wide stream stay float
    block = model.layers[0]
    assert isinstance(block.mlp.down_proj, nn.QuantizedLinear)
    assert isinstance(block.self_attn.q_proj, nn.Linear) and isinstance(block.mlp.up_proj, nn.Linear)
    assert isinstance(model.model.embed_tokens, nn.Embedding)


@pytest.mark.parametrize("field, kwargs", [("bits", {"bits": 7}), ("group_size", {"group_size": 48})])
def test_unsupported_settings_are_rejected_naming_the_field(micro_model_dir, field, kwargs):
    model, _ = load(micro_model_dir)
    with pytest.raises(ValueError, match=field):
        quantize(model, **kwargs)


def test_quantized_model_saved_reloads_in_plain_mlx_lm_with_identical_logits(tiny_model_dir, tmp_path):
    # given a model quantized to 4 bits
    model, tokenizer = load(tiny_model_dir)
    quantize(model, bits=4, group_size=32)
    config = json.loads((tiny_model_dir / "config.json").read_text())
    # when it is saved with its tokenizer and loaded by plain mlx_lm
    out = save_quantized(model, config, tmp_path / "llama-tiny-4bit", tokenizer=tokenizer)
    reloaded, reloaded_tokenizer = mlx_lm_load(str(out))
    # then the config carries the quantization and the reloaded model is the same quantized model
    saved = json.loads((out / "config.json").read_text())
    assert saved["quantization"] == {"group_size": 32, "bits": 4}
    assert isinstance(reloaded.layers[0].mlp.gate_proj, nn.QuantizedLinear)
    assert mx.array_equal(reloaded(TOKENS), model(TOKENS))
    assert reloaded_tokenizer.encode("What is 2 + 3?") == tokenizer.encode("What is 2 + 3?")


def test_quantization_config_lists_layers_that_differ_from_the_default(micro_model_dir):
    # given one layer already at 8 bits, the rest then quantized to 4 (quantized layers are kept)
    model, _ = load(micro_model_dir)
    nn.quantize(model.layers[1].mlp, group_size=64, bits=8, class_predicate=lambda p, m: p == "up_proj")
    quantize(model, bits=4, group_size=64)
    config = quantization_config(model)
    assert config["bits"] == 4 and config["group_size"] == 64
    assert config["model.layers.1.mlp.up_proj"] == {"group_size": 64, "bits": 8}


def test_saving_a_model_with_unfused_adapters_is_refused(micro_model_dir, tmp_path):
    model, _ = load(micro_model_dir)
    apply_lora(model, rank=4)
    with pytest.raises(ValueError, match="lora"):
        save_quantized(model, {"model_type": "llama"}, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- QLoRA ----------------------------------------------------------------------------------------


def cross_entropy(model, tokens):
    logits = model(tokens[:, :-1])
    return nn.losses.cross_entropy(logits, tokens[:, 1:], reduction="mean")


def test_qlora_gradients_reach_adapters_and_never_the_quantized_base(tiny_model_dir):
    # given the tiny llama quantized to 4 bits (group 64 divides 128 and 384) with LoRA on top
    model, _ = load(tiny_model_dir)
    quantize(model, bits=4, group_size=64)
    apply_lora(model, rank=4, alpha=8.0)
    base_before = {k: v for k, v in tree_flatten(model.parameters()) if ".lora_" not in k}
    loss_and_grad = nn.value_and_grad(model, cross_entropy)
    optimizer = optim.SGD(learning_rate=0.5)

    # when gradients are taken, one step is made, and gradients are taken again
    loss_before, grads = loss_and_grad(model, TOKENS)
    optimizer.update(model, grads)
    mx.eval(model.parameters(), optimizer.state)
    loss_after, grads = loss_and_grad(model, TOKENS)
    flat = dict(tree_flatten(grads))

    # then the gradient tree holds exactly the adapter weights, each of them non-zero
    # (lora_b starts at zero, so lora_a's gradient is non-zero from the second step on)
    assert set(flat) == set(adapter_parameters(model)) and flat
    assert all(mx.any(g != 0).item() for g in flat.values())
    # and the frozen quantized base is untouched by the step, while the loss went down
    assert isinstance(model.layers[0].self_attn.q_proj.linear, nn.QuantizedLinear)
    base_after = {k: v for k, v in tree_flatten(model.parameters()) if ".lora_" not in k}
    assert base_after.keys() == base_before.keys()
    assert all(mx.array_equal(base_after[k], base_before[k]).item() for k in base_before)
    assert loss_after.item() < loss_before.item()
