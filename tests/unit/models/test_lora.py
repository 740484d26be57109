"""LoRA: apply, save/load in mlx-lm's format (both directions), fuse, disable for the reference."""

import mlx.core as mx
import mlx.nn as nn
import mlx_lm
import numpy as np
import pytest
from mlx.utils import tree_flatten
from mlx_lm.tuner.utils import linear_to_lora_layers

from lazarus.models.load import load
from lazarus.models.lora import (AdapterError, adapter_parameters, adapters_disabled, adapters_merged, apply_lora,
                                 fuse_lora, load_adapter, lora_modules, save_adapter)

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


def test_merged_adapters_sample_the_adapter_paths_tokens_and_logprobs_and_are_put_back(micro_model_dir):
    from lazarus.inference.engine import Engine
    from lazarus.inference.sampling import SamplingParams

    # given a LoRA model whose adapters change its output
    model, tokenizer = load(micro_model_dir)
    apply_lora(model, rank=4, alpha=8)
    _perturb(model)
    model.eval()
    adapters = {name: m for name, m in lora_modules(model)}
    engine, params = Engine(model, tokenizer), SamplingParams(temperature=1.0, max_tokens=12, seed=7)
    prompts = [[5, 17, 42, 99], [8, 9]]
    expected = engine.generate(prompts, 3, params)

    # when it samples the same seeded batch with its adapters merged into their weights
    with adapters_merged(model) as merged:
        inside = [type(m).__name__ for n, m in model.named_modules() if n.endswith("q_proj")]
        sampled = engine.generate(prompts, 3, params)

    # then every adapted layer ran as one linear layer, and the tokens and logprobs are the adapter path's
    assert merged == len(adapters) and set(inside) == {"Linear"}
    assert [c.token_ids for c in sampled] == [c.token_ids for c in expected]
    for got, want in zip(sampled, expected):
        assert np.allclose(got.logprobs, want.logprobs, atol=1e-4)
    # and afterwards the very same adapter layers are back, training what they trained
    assert {name: m for name, m in lora_modules(model)} == adapters
    assert all(m is adapters[name] for name, m in lora_modules(model))


def test_merging_under_a_byte_limit_merges_all_or_nothing(micro_model_dir):
    # given a LoRA model whose adapted float32 weights take `total` bytes
    model, _ = load(micro_model_dir)
    apply_lora(model, rank=4)
    total = sum(m.linear.weight.nbytes for _, m in lora_modules(model))

    # when asked to merge within a limit just below that, and within exactly that
    with adapters_merged(model, max_bytes=total - 1) as below:
        pass
    with adapters_merged(model, max_bytes=total) as within:
        pass

    # then nothing merges in the first, and every adapted layer in the second
    assert below == 0
    assert within == len(lora_modules(model))


@pytest.mark.parametrize("base", ["quantized", "bfloat16"])
def test_quantized_and_bfloat16_layers_keep_the_adapter_path_when_merging(micro_model_dir, base):
    from lazarus.models.quantize import quantize

    # given adapters over quantized linear layers, or over bfloat16 ones (too coarse for a young adapter's delta)
    model, _ = load(micro_model_dir)
    if base == "quantized":
        quantize(model, bits=8, group_size=32)
    else:
        model.set_dtype(mx.bfloat16)
    apply_lora(model, rank=4)
    _perturb(model)
    expected = model(IDS)

    # when asked to merge them
    with adapters_merged(model) as merged:
        inside = model(IDS)

    # then none merges, and the output is the adapter path's
    assert merged == 0
    assert mx.array_equal(inside, expected)


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


# --- the adapter knows its base model (issue 14, item 17) ------------------------------------------------


@pytest.fixture(scope="module")
def other_base_dir(micro_model_dir, tmp_path_factory):
    """The same architecture and sizes as the micro llama, with different weights (its norms rescaled)."""
    import shutil

    out = tmp_path_factory.mktemp("other") / "llama-micro-other"
    shutil.copytree(micro_model_dir, out)
    weights = mx.load(str(out / "model.safetensors"))
    weights = {k: (v * 1.5 if "norm" in k else v) for k, v in weights.items()}
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})
    return out


def test_adapter_on_a_different_base_of_the_same_shape_is_refused_naming_the_difference(
        micro_model_dir, other_base_dir, tmp_path):
    # given an adapter trained on the micro llama
    model, _ = load(micro_model_dir)
    apply_lora(model, rank=4, alpha=8)
    _perturb(model)
    save_adapter(model, tmp_path / "adapter", metadata={"base_model": str(micro_model_dir)})
    # when it is applied to another base of the same architecture and shapes
    other, _ = load(other_base_dir)
    # then it is refused, saying the weights differ and naming the base it was trained on
    with pytest.raises(AdapterError, match=f"different base model.*different weights.*{micro_model_dir.name}"):
        load_adapter(other, tmp_path / "adapter")


def test_adapter_on_another_architecture_is_refused_naming_it(micro_model_dir, tmp_path, tmp_path_factory):
    from lazarus.models.tiny import init_model

    model, _ = load(micro_model_dir)
    apply_lora(model, rank=4, alpha=8)
    save_adapter(model, tmp_path / "adapter")
    qwen, _ = load(init_model("qwen2", "micro", tmp_path_factory.mktemp("q") / "qwen2", seed=0))
    with pytest.raises(AdapterError, match="architecture 'llama', this model is 'qwen2'"):
        load_adapter(qwen, tmp_path / "adapter")


def test_adapter_still_loads_on_its_own_base_and_on_the_quantized_base(micro_model_dir, tmp_path):
    from lazarus.models.quantize import quantize

    model, _ = load(micro_model_dir)
    apply_lora(model, rank=4, alpha=8)
    save_adapter(model, tmp_path / "adapter")
    load_adapter(load(micro_model_dir)[0], tmp_path / "adapter")
    quantized, _ = load(micro_model_dir)
    quantize(quantized, bits=8, group_size=32)
    load_adapter(quantized, tmp_path / "adapter")  # QLoRA-style: same base, quantized


def test_truncated_adapter_weights_are_refused_naming_the_file(micro_model_dir, tmp_path):
    model, _ = load(micro_model_dir)
    apply_lora(model, rank=4, alpha=8)
    save_adapter(model, tmp_path / "adapter")
    weights = tmp_path / "adapter" / "adapters.safetensors"
    weights.write_bytes(weights.read_bytes()[:50])
    with pytest.raises(AdapterError, match="adapters.safetensors: unreadable"):
        load_adapter(load(micro_model_dir)[0], tmp_path / "adapter")


def test_unknown_lora_target_is_a_user_error_naming_the_field(micro_model_dir):
    from lazarus.errors import LazarusError

    model, _ = load(micro_model_dir)
    with pytest.raises(LazarusError, match="lora.target_modules"):
        apply_lora(model, target_modules=["self_attn.nope"])
