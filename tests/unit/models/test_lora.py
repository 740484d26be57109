"""LoRA: apply, save/load in mlx-lm's format (both directions), fuse, disable for the reference."""

import mlx.core as mx
import mlx.nn as nn
import mlx_lm
import pytest
from mlx.utils import tree_flatten
from mlx_lm.tuner.utils import linear_to_lora_layers

from lazarus.models.load import load
from lazarus.models.lora import (AdapterError, adapter_parameters, adapters_disabled, apply_lora, fuse_lora,
                                 load_adapter, lora_modules, save_adapter)

IDS = mx.array([[5, 17, 42, 99, 7, 3]])


def _perturb(model, seed=0):
    """Give the adapters non-zero B so that they change the output (fresh LoRA is an identity)."""
    key = mx.random.key(seed)
    for _, m in lora_modules(model):
        key, sub = mx.random.split(key)
        m.lora_b = 0.05 * mx.random.normal(m.lora_b.shape, key=sub)


def test_apply_lora_freezes_the_base_and_trains_only_adapters(micro_model_dir):
    model, _ = load(micro_model_dir)
    apply_lora(model, rank=4, alpha=8, target_modules=["self_attn.q_proj", "self_attn.v_proj"], num_layers=1)
    trainable = [k for k, _ in tree_flatten(model.trainable_parameters())]
    assert trainable and all(k.endswith(("lora_a", "lora_b")) for k in trainable)
    assert all(k.startswith(f"model.layers.{len(model.layers) - 1}.") for k in trainable)
    assert {k.split(".")[-2] for k in trainable} == {"q_proj", "v_proj"}
    assert lora_modules(model)[0][1].scale == pytest.approx(2.0)  # alpha / rank


def test_our_adapter_loads_in_plain_mlx_lm_with_identical_logits(micro_model_dir, tmp_path):
    model, _ = load(micro_model_dir)
    apply_lora(model, rank=4, alpha=8)
    _perturb(model)
    expected = model(IDS)
    save_adapter(model, tmp_path / "adapter")
    plain, _ = mlx_lm.load(str(micro_model_dir), adapter_path=str(tmp_path / "adapter"))
    assert mx.allclose(plain(IDS), expected, atol=1e-5)


def test_mlx_lm_adapter_loads_in_ours(micro_model_dir, tmp_path):
    # given an adapter written the way mlx_lm.lora writes one
    theirs, _ = mlx_lm.load(str(micro_model_dir))
    theirs.freeze()
    linear_to_lora_layers(theirs, 2, {"rank": 4, "scale": 10.0, "dropout": 0.0})
    _perturb(theirs, seed=1)
    adapter_dir = tmp_path / "theirs"
    adapter_dir.mkdir()
    mx.save_safetensors(str(adapter_dir / "adapters.safetensors"), adapter_parameters(theirs))
    (adapter_dir / "adapter_config.json").write_text(
        '{"fine_tune_type": "lora", "num_layers": 2, "lora_parameters": {"rank": 4, "scale": 10.0, "dropout": 0.0}}')
    # when our loader applies it
    ours, _ = load(micro_model_dir, adapter=adapter_dir)
    # then the outputs agree
    assert mx.allclose(ours(IDS), theirs(IDS), atol=1e-5)


def test_adapters_disabled_gives_the_base_model_without_a_copy(micro_model_dir):
    model, _ = load(micro_model_dir)
    base = model(IDS)
    apply_lora(model, rank=4)
    _perturb(model)
    adapted = model(IDS)
    with adapters_disabled(model):
        reference = model(IDS)
    assert mx.allclose(reference, base, atol=1e-6)
    assert not mx.allclose(adapted, base, atol=1e-3)
    assert mx.allclose(model(IDS), adapted)  # restored after the block


def test_fuse_merges_adapters_into_plain_linears(micro_model_dir):
    model, _ = load(micro_model_dir)
    apply_lora(model, rank=4)
    _perturb(model)
    expected = model(IDS)
    fuse_lora(model)
    assert not lora_modules(model)
    assert all(isinstance(m, nn.Linear) for n, m in model.named_modules() if n.endswith("q_proj"))
    assert mx.allclose(model(IDS), expected, atol=1e-4)


def test_adapter_with_wrong_shapes_is_rejected_naming_the_tensor(micro_model_dir, tmp_path):
    model, _ = load(micro_model_dir)
    apply_lora(model, rank=4)
    save_adapter(model, tmp_path / "r4")
    other, _ = load(micro_model_dir)
    apply_lora(other, rank=8)
    with pytest.raises(AdapterError, match="lora_a has shape"):
        load_adapter(other, tmp_path / "r4")


def test_missing_adapter_files_are_named(micro_model_dir, tmp_path):
    model, _ = load(micro_model_dir)
    with pytest.raises(AdapterError, match="adapter_config.json"):
        load_adapter(model, tmp_path)
