"""The learner's chunked forward pass: log-probs and entropy equal to the full-logits ones, with less memory."""

import mlx.core as mx
import numpy as np
import pytest
from mlx import nn
from mlx.utils import tree_flatten

from lazarus.algorithms.logprobs import (
    chunked_token_logprobs,
    linear_token_logprobs,
    token_entropy,
    token_logprobs,
)
from lazarus.models.forward import SharedPrefix, policy_token_logprobs, shares_prefix
from lazarus.models.load import load
from lazarus.models.lora import apply_lora
from lazarus.models.tiny import ARCHITECTURES, init_model


@pytest.fixture(scope="module", params=["llama", "lazyfox"])
def policy(request, tmp_path_factory):
    model_dir = init_model(request.param, "micro", tmp_path_factory.mktemp("models") / request.param, seed=0)
    model, _ = load(model_dir)
    return model


def _batch(vocab_size: int, shape=(3, 21), seed=0):
    rng = np.random.default_rng(seed)
    return mx.array(rng.integers(0, vocab_size, shape)), mx.array(rng.integers(0, vocab_size, shape))


@pytest.mark.parametrize("chunk_size", [1, 4, 7, 64])
def test_chunked_logprobs_and_entropy_equal_the_full_logits_ones(policy, chunk_size):
    # given: a batch whose length (21) is not a multiple of most chunk sizes, at a sampling temperature
    inputs, targets = _batch(policy.args.vocab_size)
    logits = policy(inputs)
    # when
    logprobs, entropy = policy_token_logprobs(policy, inputs, targets, 0.7, chunk_size=chunk_size,
                                              with_entropy=True)
    # then
    assert logprobs.shape == entropy.shape == targets.shape
    assert mx.abs(logprobs - token_logprobs(logits, targets, 0.7)).max().item() < 1e-5
    assert mx.abs(entropy - token_entropy(logits, 0.7)).max().item() < 1e-5
    only_logprobs, no_entropy = policy_token_logprobs(policy, inputs, targets, 0.7, chunk_size=chunk_size)
    assert no_entropy is None and mx.array_equal(only_logprobs, logprobs).item()


@pytest.mark.parametrize("arch", ["llama", "lazyfox"])
def test_chunked_gradients_equal_the_full_logits_gradients_under_compile(arch, tmp_path):
    # given: a policy with LoRA adapters, and a loss on its per-token logprobs
    model, _ = load(init_model(arch, "micro", tmp_path / arch, seed=0))
    apply_lora(model, rank=4)
    inputs, targets = _batch(model.args.vocab_size, seed=1)
    weights = mx.array(np.random.default_rng(2).normal(size=targets.shape).astype(np.float32))

    def full_loss(x, y, w):
        return (token_logprobs(model(x), y) * w).sum()

    def chunked_loss(x, y, w):
        return (policy_token_logprobs(model, x, y, chunk_size=5)[0] * w).sum()

    # when: gradients of both, the chunked one compiled as the learner compiles its step
    full_value, full_grads = nn.value_and_grad(model, full_loss)(inputs, targets, weights)
    state = [model.state]
    step = mx.compile(nn.value_and_grad(model, chunked_loss), inputs=state, outputs=state)
    value, grads = step(inputs, targets, weights)
    # then
    assert abs(value.item() - full_value.item()) < 1e-3
    flat, full_flat = dict(tree_flatten(grads)), dict(tree_flatten(full_grads))
    assert flat.keys() == full_flat.keys() and any("lora" in k for k in flat)
    for name, grad in flat.items():
        assert mx.abs(grad - full_flat[name]).max().item() < 1e-4, name
    assert any(mx.abs(g).max().item() > 0 for g in flat.values())


def test_chunked_logprobs_use_less_peak_memory_forward_and_backward():
    # given: a projection to a 16k vocabulary over 4 x 256 positions (each full [B, T, V] float32: 16.8 MB)
    mx.random.seed(0)
    batch, length, hidden_size, vocab = 4, 256, 64, 16384
    head = nn.Linear(hidden_size, vocab, bias=False)
    hidden = mx.random.normal((batch, length, hidden_size))
    targets = mx.random.randint(0, vocab, (batch, length))
    mx.eval(head.parameters(), hidden, targets)

    def full(h):
        return (token_logprobs(head(h), targets) + token_entropy(head(h))).sum()

    def chunked(h):
        logprobs, entropy = chunked_token_logprobs(h, targets, head, chunk_size=16, with_entropy=True,
                                                   checkpoint=lambda fn: nn.utils.checkpoint(head, fn))
        return (logprobs + entropy).sum()

    def peak(fn) -> tuple[float, float]:
        mx.clear_cache()
        mx.reset_peak_memory()
        value, grad = mx.value_and_grad(fn)(hidden)
        mx.eval(value, grad)
        return mx.get_peak_memory(), value.item()

    # when
    full_peak, full_value = peak(full)
    chunked_peak, chunked_value = peak(chunked)
    # then: the same value, and at most half the peak memory of the full-logits version
    assert chunked_value == pytest.approx(full_value, rel=1e-5)
    assert chunked_peak < 0.5 * full_peak, (chunked_peak, full_peak)


@pytest.mark.parametrize("with_entropy", [False, True])
def test_linear_token_logprobs_values_and_gradients_equal_the_full_logits_ones_under_compile(with_entropy):
    # given: hidden states, an LM head, targets, and upstream gradients for both outputs
    rng = np.random.default_rng(0)
    hidden = mx.array(rng.normal(size=(3, 37, 16)).astype(np.float32))
    weight = mx.array(rng.normal(size=(50, 16)).astype(np.float32))
    targets = mx.array(rng.integers(0, 50, (3, 37)))
    g_logprob, g_entropy = (mx.array(rng.normal(size=(3, 37)).astype(np.float32)) for _ in range(2))

    def full(h, w):
        logits = h @ w.T
        value = (token_logprobs(logits, targets, 0.7) * g_logprob).sum()
        return value + ((token_entropy(logits, 0.7) * g_entropy).sum() if with_entropy else 0.0)

    def chunked(h, w):
        logprobs, entropy = linear_token_logprobs(h, w, targets, 0.7, chunk_size=8, with_entropy=with_entropy)
        assert (entropy is not None) == with_entropy
        return (logprobs * g_logprob).sum() + ((entropy * g_entropy).sum() if with_entropy else 0.0)

    # when
    expected, (expected_dh, expected_dw) = mx.value_and_grad(full, argnums=(0, 1))(hidden, weight)
    value, (dh, dw) = mx.compile(mx.value_and_grad(chunked, argnums=(0, 1)))(hidden, weight)
    # then
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    assert mx.abs(dh - expected_dh).max().item() < 1e-4
    assert mx.abs(dw - expected_dw).max().item() < 1e-4


def test_linear_token_logprobs_use_less_peak_memory_than_the_full_logits():
    # given: 8 x 256 positions over a 32k vocabulary (each full [B, T, V] float32: 268 MB)
    mx.random.seed(0)
    hidden = mx.random.normal((8, 256, 64))
    weight = mx.random.normal((32768, 64)) * 0.1
    targets = mx.random.randint(0, 32768, (8, 256))
    mx.eval(hidden, weight, targets)

    def peak(loss) -> tuple[float, float]:
        mx.clear_cache()
        mx.reset_peak_memory()
        value, grad = mx.value_and_grad(loss)(hidden)
        mx.eval(value, grad)
        return mx.get_peak_memory(), value.item()

    # when
    full_peak, full_value = peak(lambda h: token_logprobs(h @ weight.T, targets).sum())
    chunked_peak, value = peak(lambda h: linear_token_logprobs(h, weight, targets, chunk_size=16,
                                                               weight_grad=False)[0].sum())
    # then
    assert value == pytest.approx(full_value, rel=1e-5)
    assert chunked_peak < 0.5 * full_peak, (chunked_peak, full_peak)


def test_targets_of_the_last_positions_give_the_last_columns_and_their_gradients(policy):
    # given: a batch whose loss reads only its last 9 columns (a learner's completion columns)
    inputs, targets = _batch(policy.args.vocab_size)
    start = inputs.shape[1] - 9
    weights = mx.array(np.random.default_rng(3).normal(size=(inputs.shape[0], 9)).astype(np.float32))
    # when: logprobs of those columns only, and of the whole row
    tail, tail_entropy = policy_token_logprobs(policy, inputs, targets[:, start:], 0.7, with_entropy=True)
    whole, whole_entropy = policy_token_logprobs(policy, inputs, targets, 0.7, with_entropy=True)
    # then: the same numbers for those columns, and the same gradient of a loss on them
    assert tail.shape == tail_entropy.shape == (inputs.shape[0], 9)
    assert mx.abs(tail - whole[:, start:]).max().item() < 1e-5
    assert mx.abs(tail_entropy - whole_entropy[:, start:]).max().item() < 1e-5
    _, tail_grads = nn.value_and_grad(policy, lambda: (policy_token_logprobs(
        policy, inputs, targets[:, start:])[0] * weights).sum())()
    _, whole_grads = nn.value_and_grad(policy, lambda: (policy_token_logprobs(
        policy, inputs, targets)[0][:, start:] * weights).sum())()
    for (name, grad), (_, expected) in zip(tree_flatten(tail_grads), tree_flatten(whole_grads)):
        assert mx.abs(grad - expected).max().item() < 1e-4, name


def test_targets_longer_than_the_inputs_are_refused(policy):
    inputs, targets = _batch(policy.args.vocab_size)
    with pytest.raises(ValueError, match="last positions of inputs"):
        policy_token_logprobs(policy, inputs[:, :5], targets)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_a_shared_prompt_gives_the_logprobs_entropies_and_gradients_of_whole_rows(arch, tmp_path):
    # given: a policy with LoRA adapters (B nonzero, so they shape the gradient), four groups of two rows whose
    # prompts differ in length (so the shared prompts are left-padded; a one-token prompt shares nothing but
    # padding), and a loss on the completion tokens
    model, _ = load(init_model(arch, "micro", tmp_path / arch, seed=0))
    if not shares_prefix(model):
        pytest.skip(f"{arch} does not attend through plain KV caches")
    apply_lora(model, rank=4)
    for _, module in model.named_modules():
        if "lora_b" in module:
            module.lora_b = mx.array(np.random.default_rng(3).normal(size=module.lora_b.shape) * 0.05, mx.float32)
    rng = np.random.default_rng(4)
    vocab, completion = model.args.vocab_size, 9
    prompts = [rng.integers(0, vocab, n).tolist() for n in (4, 11, 7, 1)]
    completions = [rng.integers(0, vocab, completion).tolist() for _ in range(8)]
    rows = [0, 0, 1, 1, 2, 2, 3, 3]
    weights = mx.array(rng.normal(size=(8, completion)).astype(np.float32))
    width = max(map(len, prompts)) - 1
    prefix = SharedPrefix(mx.array([[0] * (width - len(p) + 1) + p[:-1] for p in prompts]),
                          mx.array([width - len(p) + 1 for p in prompts]), mx.array(rows))
    suffix = mx.array([[prompts[g][-1]] + c[:-1] for g, c in zip(rows, completions)])
    targets = mx.array(completions)

    def whole_rows():  # each row alone, unpadded: the completion's positions of prompt + completion
        out = [policy_token_logprobs(model, mx.array([prompts[g] + c[:-1]]), mx.array([c]), 0.7, with_entropy=True)
               for g, c in zip(rows, completions)]
        return mx.concatenate([o[0] for o in out]), mx.concatenate([o[1] for o in out])

    def shared():
        return policy_token_logprobs(model, suffix, targets, 0.7, with_entropy=True, prefix=prefix)

    # when: logprobs, entropies and the gradient of a loss on them, both ways (the shared way compiled)
    (logprobs, entropy), (expected_logprobs, expected_entropy) = shared(), whole_rows()
    _, grads = mx.compile(nn.value_and_grad(model, lambda: (shared()[0] * weights).sum()),
                          inputs=[model.state], outputs=[model.state])()
    _, expected_grads = nn.value_and_grad(model, lambda: (whole_rows()[0] * weights).sum())()

    # then: the same numbers to float rounding
    np.testing.assert_allclose(np.array(logprobs), np.array(expected_logprobs), atol=2e-5)
    np.testing.assert_allclose(np.array(entropy), np.array(expected_entropy), atol=2e-5)
    assert len(tree_flatten(grads)) == len(tree_flatten(expected_grads)) > 0
    for (name, grad), (_, expected) in zip(tree_flatten(grads), tree_flatten(expected_grads)):
        np.testing.assert_allclose(np.array(grad), np.array(expected), atol=1e-5, rtol=1e-3, err_msg=name)


def test_a_model_with_a_sliding_window_layer_does_not_share_prompts(tmp_path):
    # given: the same llama, once with full attention in every layer and once with a sliding-window layer
    # (whose rotating cache keeps only the window, so no prompt can be kept whole for the rows)
    full, _ = load(init_model("llama", "micro", tmp_path / "full", seed=0))
    windowed, _ = load(init_model("llama", "micro", tmp_path / "windowed", seed=0, sliding_window=8,
                                  layer_types=["sliding_attention", "full_attention"]))
    # then: only the first shares prompts (the learner runs the other on whole rows)
    assert shares_prefix(full) and not shares_prefix(windowed)
