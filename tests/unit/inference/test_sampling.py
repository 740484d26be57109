"""`sample_tokens`: draws follow the (truncated) tempered softmax; logprobs are under the full one."""

import math

import mlx.core as mx
import pytest

from lazarus.inference.sampling import SamplingParams, Uniforms, sample_tokens

LOGITS = [2.0, 1.0, 0.5, 0.0, -1.0, -3.0]  # softmax ~ [.56, .21, .13, .08, .03, .004]
DRAWS = 20000


def draw(params: SamplingParams, seed: int = 0, logits=LOGITS) -> tuple[list[float], mx.array]:
    """Empirical frequency of each token over DRAWS rows of the same logits, and the logprobs returned."""
    rows = mx.broadcast_to(mx.array(logits), (DRAWS, len(logits)))
    tokens, logprobs = sample_tokens(rows, params, Uniforms(seed, DRAWS).next(DRAWS))
    counts = mx.zeros(len(logits)).at[tokens].add(1.0)
    return (counts / DRAWS).tolist(), (tokens, logprobs)


def tempered_softmax(logits, temperature=1.0, keep=None):
    keep = keep if keep is not None else range(len(logits))
    weights = [math.exp(logit / temperature) if i in keep else 0.0 for i, logit in enumerate(logits)]
    return [w / sum(weights) for w in weights]


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_draws_follow_the_tempered_softmax(temperature):
    # given fixed logits, when drawing many tokens at temperature T
    freq, _ = draw(SamplingParams(temperature=temperature))
    # then each token's frequency matches softmax(logits / T) (4 standard errors)
    for f, p in zip(freq, tempered_softmax(LOGITS, temperature)):
        assert abs(f - p) < 4 * math.sqrt(p * (1 - p) / DRAWS) + 1e-9


def test_top_k_draws_only_the_k_most_likely_renormalized():
    freq, _ = draw(SamplingParams(top_k=3))
    expected = tempered_softmax(LOGITS, keep={0, 1, 2})
    assert freq[3:] == [0.0, 0.0, 0.0]
    for f, p in zip(freq, expected):
        assert abs(f - p) < 4 * math.sqrt(p * (1 - p) / DRAWS) + 1e-9


def test_top_p_keeps_the_smallest_prefix_holding_p_of_the_mass():
    # softmax ~ [.56, .21, .13, .08, ...]: 0.8 of the mass needs the first three tokens
    freq, _ = draw(SamplingParams(top_p=0.8))
    assert freq[0] > 0 and freq[1] > 0 and freq[2] > 0 and freq[3:] == [0.0, 0.0, 0.0]


def test_top_p_after_top_k_is_over_the_top_k_mass():
    # given top-k 2 the renormalized mass is [.73, .27]: top-p 0.7 then keeps only the first token
    freq, _ = draw(SamplingParams(top_k=2, top_p=0.7))
    assert freq[0] == 1.0
    # while top-p 0.8 over the same two keeps both
    freq, _ = draw(SamplingParams(top_k=2, top_p=0.8))
    assert freq[1] > 0 and freq[2:] == [0.0] * 4


def test_min_p_drops_tokens_below_that_fraction_of_the_most_likely():
    # p / p_max = exp(l - 2): token 3 is at e^-2 ~ 0.135, token 4 at e^-3 ~ 0.05
    freq, _ = draw(SamplingParams(min_p=0.1))
    assert all(f > 0 for f in freq[:4]) and freq[4:] == [0.0, 0.0]


@pytest.mark.parametrize("params", [SamplingParams(), SamplingParams(top_k=2, top_p=0.5, temperature=0.7),
                                    SamplingParams(min_p=0.2), SamplingParams(temperature=0)])
def test_logprobs_are_under_the_full_tempered_softmax(params):
    _, (tokens, logprobs) = draw(params)
    t = params.temperature or 1.0
    full = tempered_softmax(LOGITS, t)
    expected = mx.log(mx.array(full))[tokens]
    assert mx.abs(expected - logprobs).max().item() < 1e-5


def test_greedy_takes_the_argmax():
    _, (tokens, _) = draw(SamplingParams(temperature=0), logits=[0.0, 3.0, 1.0])
    assert set(tokens.tolist()) == {1}


def test_same_key_same_tokens():
    a = draw(SamplingParams(top_k=4), seed=5)[1][0]
    b = draw(SamplingParams(top_k=4), seed=5)[1][0]
    c = draw(SamplingParams(top_k=4), seed=6)[1][0]
    assert mx.array_equal(a, b) and not mx.array_equal(a, c)


@pytest.mark.parametrize("params", [SamplingParams(), SamplingParams(temperature=0.7, top_k=20, top_p=0.9),
                                    SamplingParams(top_p=0.95), SamplingParams(min_p=0.05),
                                    SamplingParams(temperature=0)])
def test_the_compiled_sampler_draws_what_the_op_by_op_one_does_at_every_batch_size_and_stream(params):
    # given random logits over a 1k vocabulary, and batches that shrink as a decode loop's rows finish
    logits = mx.random.normal((32, 1024), key=mx.random.key(1)) * 3
    uniforms = Uniforms(2, 32)
    for rows, stream in [(32, None), (7, None), (1, None), (7, mx.new_stream(mx.default_device()))]:
        u = uniforms.next(rows)
        with mx.stream(stream or mx.default_stream(mx.default_device())):
            # when the same draw runs compiled (a new shape, then another stream) and op by op
            tokens, logprobs = sample_tokens(logits[:rows], params, u)
            mx.disable_compile()
            try:
                eager_tokens, eager_logprobs = sample_tokens(logits[:rows], params, u)
            finally:
                mx.enable_compile()
        # then the tokens are the same and the logprobs agree to float rounding
        assert tokens.tolist() == eager_tokens.tolist()
        assert mx.abs(logprobs - eager_logprobs).max().item() < 1e-5
