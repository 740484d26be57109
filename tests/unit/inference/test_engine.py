"""The engine's logprobs, determinism, stops and finish reasons, on a real tiny model."""

import mlx.core as mx
import pytest

from lazarus.inference.engine import Engine, chat_prompt_ids
from lazarus.inference.sampling import SamplingParams


def forward_logprobs(model, prompt, completion, temperature=1.0):
    """log-softmax(logits / T) at the sampled tokens, from one separate full forward pass."""
    logits = model(mx.array([prompt + completion]))[0, len(prompt) - 1 : -1].astype(mx.float32)
    if temperature > 0:
        logits = logits / temperature
    logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    return mx.take_along_axis(logprobs, mx.array(completion)[:, None], axis=-1).squeeze(-1)


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 0, 1.0), (1.3, 20, 0.9), (0.0, 0, 1.0)])
def test_logprobs_equal_a_separate_forward_pass(tiny_model, temperature, top_k, top_p):
    # given prompts of different lengths (left-padded together in one batch)
    model, tokenizer = tiny_model
    prompts = [tokenizer.encode("What is 12 + 7?"), tokenizer.encode("Hi"), tokenizer.encode("The sum of 3 and 4 is")]
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, max_tokens=12, seed=0)
    # when the engine samples 3 completions of each
    completions = Engine(model, tokenizer).generate(prompts, n=3, params=params)
    # then each token's logprob is the log-softmax of a separate forward pass at that token
    assert [c.prompt_index for c in completions] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    for c in completions:
        assert len(c.logprobs) == len(c.token_ids) > 0
        expected = forward_logprobs(model, prompts[c.prompt_index], c.token_ids, temperature)
        assert mx.abs(expected - mx.array(c.logprobs)).max().item() < 1e-4


def test_same_seed_gives_same_tokens_and_other_seed_differs(tiny_model):
    model, tokenizer = tiny_model
    engine = Engine(model, tokenizer)
    prompt = tokenizer.encode("What is 1 + 1?")
    def run(seed):
        return [c.token_ids for c in engine.generate([prompt], 4, SamplingParams(max_tokens=16, seed=seed))]

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_n_samples_of_one_prompt_differ_from_each_other(tiny_model):
    model, tokenizer = tiny_model
    out = Engine(model, tokenizer).generate(tokenizer.encode("Hello"), 8, SamplingParams(max_tokens=16, seed=0))
    assert len({tuple(c.token_ids) for c in out}) > 1


def test_length_finish_reason_and_max_tokens(tiny_model):
    model, tokenizer = tiny_model
    params = SamplingParams(max_tokens=5, seed=0, stop_token_ids=[])
    out = Engine(model, tokenizer).generate([[5, 6, 7]], 2, params)
    for c in out:
        assert c.finish_reason in ("length", "stop") and len(c.token_ids) <= 5
        if c.finish_reason == "length":
            assert len(c.token_ids) == 5


def test_stop_token_ids_end_the_completion_and_are_kept(tiny_model):
    # given a greedy continuation, and its third token declared a stop token
    model, tokenizer = tiny_model
    engine = Engine(model, tokenizer)
    greedy = engine.generate([[5, 6, 7]], 1, SamplingParams(temperature=0, max_tokens=8))[0]
    stop = greedy.token_ids[2]
    first = greedy.token_ids.index(stop)
    # when generating with that stop token
    out = engine.generate([[5, 6, 7]], 1, SamplingParams(temperature=0, max_tokens=8, stop_token_ids=[stop]))[0]
    # then the completion ends at its first occurrence, includes it, and says "stop"
    assert out.token_ids == greedy.token_ids[: first + 1] and out.finish_reason == "stop"


def test_stop_strings_cut_the_text(tiny_model):
    model, tokenizer = tiny_model
    engine = Engine(model, tokenizer)
    greedy = engine.generate([[5, 6, 7]], 1, SamplingParams(temperature=0, max_tokens=10))[0]
    assert len(greedy.text) >= 4
    marker = greedy.text[2:4]
    out = engine.generate([[5, 6, 7]], 1, SamplingParams(temperature=0, max_tokens=10, stop=[marker]))[0]
    assert out.finish_reason == "stop" and marker not in out.text
    assert greedy.text.startswith(out.text)


def test_stream_yields_the_same_tokens_as_generate(tiny_model):
    model, tokenizer = tiny_model
    engine = Engine(model, tokenizer)
    prompt = chat_prompt_ids(tokenizer, "What is 2 + 2?")
    params = SamplingParams(temperature=0.8, max_tokens=12, seed=3)
    events = list(engine.stream(prompt, params))
    batch = engine.generate([prompt], 1, params)[0]
    assert [e.token for e in events] == batch.token_ids
    assert "".join(e.text for e in events) == batch.text
    assert events[-1].finish_reason is not None


def test_bad_sampling_params_name_the_field():
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1)
