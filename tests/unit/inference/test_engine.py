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


def assert_logprobs_match_forward(model, prompts, completions, temperature=1.0):
    """Each completion's logprobs are those of one separate forward pass over its prompt + tokens."""
    for c in completions:
        expected = forward_logprobs(model, prompts[c.prompt_index], c.token_ids, temperature)
        assert mx.abs(expected - mx.array(c.logprobs)).max().item() < 1e-4


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


def test_a_stop_string_ends_the_completion_at_the_first_token_whose_text_holds_it(tiny_model):
    # given a seeded sampled continuation, and each two-character piece of its text as a stop string
    model, tokenizer = tiny_model
    engine = Engine(model, tokenizer)
    params = SamplingParams(temperature=1.0, max_tokens=16, seed=3)
    full = engine.generate([[5, 6, 7]], 1, params)[0]
    eos = set(engine.eos_token_ids)
    pieces = {full.text[k : k + 2] for k in range(len(full.text) - 1)}
    assert len(pieces) >= 8
    for piece in sorted(pieces):
        # when generating with the same seed and that stop string
        out = engine.generate([[5, 6, 7]], 1, SamplingParams(**{**params.__dict__, "stop": [piece]}))[0]
        # then it ends with the first token after which the decoded text contains it, and says "stop"
        first = next(k for k in range(1, len(full.token_ids) + 1)
                     if piece in tokenizer.decode([t for t in full.token_ids[:k] if t not in eos]))
        assert (out.token_ids, out.finish_reason) == (full.token_ids[:first], "stop"), piece


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


class CountingModel:
    """The real model, recording how many rows and tokens each forward call is given."""

    def __init__(self, model):
        self.model = model
        self.calls: list[tuple[int, int]] = []

    def __call__(self, inputs, cache=None, **kwargs):
        self.calls.append(tuple(inputs.shape))
        return self.model(inputs, cache=cache, **kwargs)

    def __getattr__(self, name):
        return getattr(self.model, name)


def test_each_prompt_is_prefilled_once_for_its_whole_group(tiny_model):
    # given two prompts and a group of 4 completions each
    model, tokenizer = tiny_model
    counting = CountingModel(model)
    prompts = [[5, 6, 7, 8, 9], [10, 11]]
    # when generating
    out = Engine(counting, tokenizer).generate(prompts, 4, SamplingParams(max_tokens=6, seed=0))
    # then the prompts went in with 2 rows (not 8): their bodies, then their last tokens; and only then
    # did the 8 completions decode, one token per row per step
    assert counting.calls[:2] == [(2, 4), (2, 1)]
    assert all(rows <= 8 and width == 1 for rows, width in counting.calls[2:])
    # and the shared prefill still gives each completion the logprobs of its own full forward
    assert_logprobs_match_forward(model, prompts, out)


def test_groups_join_the_batch_as_rows_free_up(tiny_model):
    # given room for only one group of 2 at a time and three prompts
    model, tokenizer = tiny_model
    prompts = [tokenizer.encode("What is 12 + 7?"), tokenizer.encode("Hi"), tokenizer.encode("The sum of")]
    params = SamplingParams(temperature=0, max_tokens=8)
    narrow = Engine(model, tokenizer, completion_batch_size=2).generate(prompts, 2, params)
    wide = Engine(model, tokenizer, completion_batch_size=64).generate(prompts, 2, params)
    # then the results are those of one wide batch, prompt-major
    assert [c.prompt_index for c in narrow] == [0, 0, 1, 1, 2, 2]
    assert [c.token_ids for c in narrow] == [c.token_ids for c in wide]
    assert [c.finish_reason for c in narrow] == [c.finish_reason for c in wide]


def test_keep_cache_reports_how_many_tokens_the_cache_holds(tiny_model):
    model, tokenizer = tiny_model
    prompt = [5, 6, 7]
    out = Engine(model, tokenizer).generate([prompt], 3, SamplingParams(max_tokens=5, seed=1), keep_cache=True)
    for c in out:
        assert c.cache is not None
        # the cache holds the prompt and every token but possibly the last one (never fed to the model)
        assert len(prompt) + len(c.token_ids) - 1 <= c.cached_tokens <= len(prompt) + len(c.token_ids)
    plain = Engine(model, tokenizer).generate([prompt], 1, SamplingParams(max_tokens=5, seed=1))
    assert plain[0].cache is None and plain[0].cached_tokens == 0


def test_continuing_from_a_cache_equals_reprefilling_the_whole_history(tiny_model):
    # given a first turn of two episodes with different prompt lengths, caches kept
    model, tokenizer = tiny_model
    engine = Engine(model, tokenizer)
    prompts = [tokenizer.encode("What is 12 + 7?"), tokenizer.encode("Hi")]
    first = engine.generate(prompts, 1, SamplingParams(max_tokens=6, seed=0), keep_cache=True)
    observations = [tokenizer.encode(" tool says 19."), tokenizer.encode(" ok")]
    histories = [prompts[i] + first[i].token_ids + observations[i] for i in range(2)]
    # when the second turn continues from each cache with what it lacks (unfed tokens, then the observation)
    suffixes = [h[c.cached_tokens:] for h, c in zip(histories, first)]
    params = SamplingParams(temperature=0.9, top_k=30, max_tokens=8, seed=2)
    second = engine.generate(suffixes, 1, params, caches=[c.cache for c in first])
    # then each token's logprob is that of one forward pass over the whole history
    for h, c in zip(histories, second):
        expected = forward_logprobs(model, h, c.token_ids, temperature=0.9)
        assert mx.abs(expected - mx.array(c.logprobs)).max().item() < 1e-4
    # and the caches were not consumed: the same continuation again gives the same tokens
    again = engine.generate(suffixes, 1, params, caches=[c.cache for c in first])
    assert [c.token_ids for c in again] == [c.token_ids for c in second]


def test_a_continued_cache_can_be_kept_again_for_a_third_turn(tiny_model):
    model, tokenizer = tiny_model
    engine = Engine(model, tokenizer)
    params = SamplingParams(temperature=0, max_tokens=4)
    history = [5, 6, 7]
    turn = engine.generate([history], 1, params, keep_cache=True)[0]
    for observation in ([20, 21], [30]):
        history = history + turn.token_ids
        suffix = history[turn.cached_tokens:] + observation
        history = history + observation
        turn = engine.generate([suffix], 1, params, caches=[turn.cache], keep_cache=True)[0]
    # then the third turn is what greedy decoding of the whole history gives
    fresh = engine.generate([history], 1, params)[0]
    assert turn.token_ids == fresh.token_ids


def test_caches_must_match_the_prompts(tiny_model):
    model, tokenizer = tiny_model
    with pytest.raises(ValueError, match="caches"):
        Engine(model, tokenizer).generate([[5, 6], [7]], 1, SamplingParams(max_tokens=2), caches=[None])


def test_a_group_larger_than_the_batch_joins_in_slices(tiny_model):
    # given a batch of 3 rows and a group of 8
    model, tokenizer = tiny_model
    counting = CountingModel(model)
    params = SamplingParams(temperature=0, max_tokens=4, stop_token_ids=[])
    out = Engine(counting, tokenizer, completion_batch_size=3).generate([[5, 6, 7]], 8, params)
    # then no forward ever saw more than 3 rows, the group was prefilled once per slice (3 + 3 + 2),
    # and all 8 greedy completions agree
    assert max(rows for rows, _ in counting.calls) <= 3
    assert len([c for c in counting.calls if c[1] > 1]) == 3
    assert len(out) == 8 and len({tuple(c.token_ids) for c in out}) == 1


def test_unpadded_batches_attend_without_a_mask_and_match_padded_ones(tiny_model):
    # given two prompts of one length (no row padded) and the same two next to a longer one (padded)
    model, tokenizer = tiny_model
    engine = Engine(model, tokenizer)
    same_length = [[5, 6, 7, 8], [9, 10, 11, 12]]
    params = SamplingParams(temperature=0, max_tokens=6)
    alone = engine.generate(same_length, 1, params)
    padded = engine.generate(same_length + [[13, 14, 15, 16, 17, 18, 19]], 1, params)
    # then the unpadded batch's results equal the padded batch's for those prompts, and a forward pass's
    assert [c.token_ids for c in alone] == [c.token_ids for c in padded[:2]]
    assert_logprobs_match_forward(model, same_length, alone)


def test_a_group_joins_next_to_rows_still_decoding(tiny_model):
    # given three prompts, room for two groups of 2, and a stop token that ends prompt 0's group early
    model, tokenizer = tiny_model
    prompts = [tokenizer.encode("2 + 2 ="), tokenizer.encode("Hello"), tokenizer.encode("red blue green small")]
    greedy = SamplingParams(temperature=0, max_tokens=10, stop_token_ids=[])
    free = Engine(model, tokenizer).generate(prompts, 1, greedy)
    later = set(free[1].token_ids) | set(free[2].token_ids)
    stop = next(t for t in free[0].token_ids if t not in later)
    params = SamplingParams(temperature=0, max_tokens=10, stop_token_ids=[stop])
    counting = CountingModel(model)
    # when generating with a batch of 4 rows
    narrow = Engine(counting, tokenizer, completion_batch_size=4).generate(prompts, 2, params)
    # then prompt 2's group was prefilled while prompt 1's rows were mid-decode, and joined them (4 rows)
    third = counting.calls.index((1, len(prompts[2]) - 1))  # its body; then its last token; then all rows
    assert counting.calls[third + 1 : third + 3] == [(1, 1), (4, 1)]
    # and every completion is what a wide batch gives, with the logprobs of its own forward pass
    wide = Engine(model, tokenizer).generate(prompts, 2, params)
    assert [c.token_ids for c in narrow] == [c.token_ids for c in wide]
    assert narrow[0].finish_reason == "stop" and narrow[0].token_ids[-1] == stop
    assert_logprobs_match_forward(model, prompts, narrow)


def test_long_prompts_prefill_in_chunks_with_the_same_logprobs(tiny_model):
    # given prompts longer than the prefill step, one of a single token
    model, tokenizer = tiny_model
    prompts = [list(range(5, 17)), [40], list(range(20, 27))]
    counting = CountingModel(model)
    # when prefilling 3 tokens at a time
    out = Engine(counting, tokenizer, prefill_step_size=3).generate(prompts, 2, SamplingParams(max_tokens=5, seed=4))
    # then the 11 body tokens went in as 3 + 3 + 3 + 2, and the logprobs are those of one forward pass
    assert counting.calls[:5] == [(3, 3), (3, 3), (3, 3), (3, 2), (3, 1)]
    assert_logprobs_match_forward(model, prompts, out)


def test_batch_kv_cache_holds_the_sequence_rounded_up_to_32_positions(tiny_model):
    # given: an engine and two prompts of 10 and 7 tokens (mlx-lm's cache would reserve 256 positions)
    model, tokenizer = tiny_model
    engine = Engine(model, tokenizer)
    # when: they are prefilled together
    cache, logits = engine._prefill([list(range(1, 11)), list(range(1, 8))], [None, None])
    mx.eval(logits, [c.state for c in cache])
    # then: every layer holds 32 positions per row, the 10 tokens rounded up to the cache's step
    assert {c.keys.shape[2] for c in cache} == {32}
