"""Every family loads from an HF-format directory written by the test, through our loader and mlx-lm's."""

import json

import mlx.core as mx
import mlx_lm
import pytest

from lazarus.models.load import ModelLoadError, load, num_parameters
from lazarus.models.tiny import ARCHITECTURES, init_model


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_each_family_loads_from_an_hf_directory_and_runs_a_forward_pass(tmp_path, arch):
    # given a random-init HF-format directory of this family
    path = init_model(arch, "micro", tmp_path / arch, seed=1)
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == arch and "rope_theta" in config
    # when it is loaded by our loader and by plain mlx_lm.load
    model, tokenizer = load(path)
    plain_model, _ = mlx_lm.load(str(path))
    ids = mx.array([tokenizer.encode("What is 12 + 7?")])
    # then both give the same logits over the whole vocabulary
    logits = model(ids)
    assert logits.shape == (1, ids.shape[1], config["vocab_size"])
    assert mx.allclose(logits, plain_model(ids), atol=1e-5)
    assert num_parameters(model) > 10_000


def test_tiny_size_is_about_one_million_parameters(tmp_path):
    model, _ = load(init_model("llama", "tiny", tmp_path / "m"))
    assert 0.5e6 < num_parameters(model) < 2e6


def test_same_seed_writes_identical_weights(tmp_path):
    a = mx.load(str(init_model("lazyfox", "micro", tmp_path / "a", seed=3) / "model.safetensors"))
    b = mx.load(str(init_model("lazyfox", "micro", tmp_path / "b", seed=3) / "model.safetensors"))
    assert a.keys() == b.keys() and all(mx.array_equal(a[k], b[k]) for k in a)


def test_tokenizer_has_chat_template_and_splits_digits(tiny_model):
    _, tokenizer = tiny_model
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    ids = ids["input_ids"] if isinstance(ids, dict) else ids
    assert tokenizer.decode(ids).endswith("<|im_start|>assistant\n")
    assert [tokenizer.decode([t]) for t in tokenizer.encode("123")] == ["1", "2", "3"]
    assert tokenizer.eos_token_ids == {tokenizer.convert_tokens_to_ids("<|im_end|>")}


def test_missing_path_names_the_path(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load(tmp_path / "nope")


def test_directory_without_weights_is_reported(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="safetensors"):
        load(tmp_path)


def test_unknown_arch_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown arch"):
        init_model("gpt9", "tiny", tmp_path / "x")


def test_a_quantized_directory_loads_as_float32_on_the_cpu_unless_told_never(tiny_model_dir, tmp_path, caplog):
    # given: a tiny model quantized to 8 bits and saved as an mlx-lm directory
    import logging

    import mlx.core as mx
    from mlx import nn

    from lazarus.models.quantize import quantize, save_quantized

    model, tokenizer = load(tiny_model_dir)
    quantize(model, bits=8, group_size=32)
    config = json.loads((tiny_model_dir / "config.json").read_text())
    out = save_quantized(model, config, tmp_path / "q8", tokenizer=tokenizer)
    ids = mx.array([[1, 5, 9, 13, 2]])
    # when: loaded with the default (auto) and with never
    with caplog.at_level(logging.WARNING, logger="lazarus.models.load"):
        float_model, _ = load(out)
    kept, _ = load(out, dequantize="never")
    # then: auto dequantized it (and said so), never kept it, and both give the same logits
    assert not any(isinstance(m, nn.QuantizedLinear) for _, m in float_model.named_modules())
    assert any(isinstance(m, nn.QuantizedLinear) for _, m in kept.named_modules())
    assert any("dequantized to float32" in r.getMessage() for r in caplog.records)
    assert mx.allclose(float_model(ids), kept(ids), atol=1e-4).item()


def test_an_unknown_dequantize_mode_names_the_choices(tiny_model_dir):
    with pytest.raises(ModelLoadError, match="auto, always, never"):
        load(tiny_model_dir, dequantize="sometimes")


def test_truncated_weights_or_incomplete_config_are_model_load_errors_naming_the_path(micro_model_dir, tmp_path):
    # given copies of a model with truncated weights, and with a config.json that lacks its fields
    import json
    import shutil

    from lazarus.models.load import ModelLoadError

    truncated = tmp_path / "truncated"
    shutil.copytree(micro_model_dir, truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    fieldless = tmp_path / "fieldless"
    shutil.copytree(micro_model_dir, fieldless)
    (fieldless / "config.json").write_text(json.dumps({"model_type": "llama"}))
    # when they are loaded, then each is one ModelLoadError naming the directory
    for path in (truncated, fieldless):
        with pytest.raises(ModelLoadError, match=str(path)):
            load(path)
