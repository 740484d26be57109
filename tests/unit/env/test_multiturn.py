"""Multi-turn rollout at the token level, on a real tiny model: the episode's ids and mask equal a by-hand
construction, behaviour logprobs equal a separate forward pass, and a batch advances episodes that finish
at different turns with one generate call per round."""

import mlx.core as mx
import numpy as np
import pytest

from lazarus.data.trajectory import RolloutTask, SamplingSettings
from lazarus.env.multiturn import run_episodes, trajectories_of
from lazarus.env.observation import continuation_ids, prompt_ids
from lazarus.env.protocol import Observation, StepResult
from lazarus.env.rewards import RewardFunction
from lazarus.env.rollout import rollout
from lazarus.inference.engine import Engine
from lazarus.inference.sampling import SamplingParams

STOPS = ["e", "a", " "]  # a random-init model's turns end at one of these within a few tokens


class ScriptedEnv:
    """Answers every turn with a numbered tool message; done after the row's `turns` steps (never if absent)."""

    def __init__(self):
        self.steps, self.turns = 0, None

    def reset(self, task):
        self.turns = task.get("turns")
        return Observation()

    def step(self, action_text):
        self.steps += 1
        done = self.turns is not None and self.steps >= self.turns
        return StepResult(Observation([] if done else [{"role": "tool", "content": f"result {self.steps}"}]),
                          0.0, done, {})


class CountingEngine(Engine):
    """The real engine, recording the batch size of every generate call."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches = []

    def generate(self, prompt_ids, n=1, params=None):
        self.batches.append(len(prompt_ids) * n)
        return super().generate(prompt_ids, n, params)


def make_task(tokenizer, rows, group_size, temperature):
    prompts = [prompt_ids(tokenizer, [{"role": "user", "content": r["prompt"]}]) for r in rows]
    return RolloutTask("t", prompts, rows, [f"g{i}" for i in range(len(rows))], group_size,
                       SamplingSettings(temperature=temperature), max_tokens=24, policy_version=0, seed=3)


def segments(mask):
    """(start, end, value) runs of a 0/1 mask."""
    runs, start = [], 0
    for i in range(1, len(mask) + 1):
        if i == len(mask) or mask[i] != mask[start]:
            runs.append((start, i, int(mask[start])))
            start = i
    return runs


def test_three_turn_episode_equals_a_by_hand_construction(tiny_model):
    # given a greedy engine and an env that answers every turn
    model, tokenizer = tiny_model
    engine = Engine(model, tokenizer)
    task = make_task(tokenizer, [{"prompt": "What is 12 * 7?"}, {"prompt": "Hello there"}], 1, 0.0)
    params = SamplingParams(temperature=0.0, max_tokens=24, stop=STOPS)
    # when 3-turn episodes run
    results = run_episodes(engine, task, [], ScriptedEnv, params, max_turns=3, max_total_tokens=400,
                           observation_max_tokens=16)
    # then each equals: turn 1 as generated from the prompt, EOS and the tool message (mask 0), turn 2 as
    # generated from exactly those ids, ... with logprob 0 on every env token
    eos = min(engine.eos_token_ids)
    checked = 0
    for episode, _ in results:
        if episode.turns != 3:
            continue
        history, expected, expected_mask = list(episode.prompt_ids), [], []
        for turn in range(1, 4):
            (c,) = engine.generate([history], 1, params)
            tool_message = [{"role": "tool", "content": f"result {turn}"}]
            env_ids = [] if turn == 3 else [eos] + continuation_ids(tokenizer, tool_message)
            if c.token_ids[-1:] == [eos] and env_ids:
                env_ids = env_ids[1:]
            expected += c.token_ids + env_ids
            expected_mask += [1] * len(c.token_ids) + [0] * len(env_ids)
            history += c.token_ids + env_ids
        assert episode.tokens == expected
        assert episode.mask == expected_mask
        assert [r[2] for r in segments(episode.mask)] == [1, 0, 1, 0, 1]
        assert all(lp == 0.0 for lp, m in zip(episode.logprobs, episode.mask) if m == 0)
        checked += 1
    assert checked >= 1


def test_behaviour_logprobs_of_model_tokens_equal_a_separate_forward_pass(tiny_model):
    # given sampled multi-turn episodes at temperature 1
    model, tokenizer = tiny_model
    task = make_task(tokenizer, [{"prompt": "What is 3 + 4?"}, {"prompt": "Name a city"}], 3, 1.0)
    params = SamplingParams(temperature=1.0, max_tokens=24, stop=STOPS, seed=5)
    results = run_episodes(Engine(model, tokenizer), task, [], ScriptedEnv, params, max_turns=3,
                           max_total_tokens=400, observation_max_tokens=16)
    assert any(e.turns > 1 for e, _ in results)
    for episode, _ in results:
        # when the whole episode goes through the model in one forward pass
        sequence = episode.prompt_ids + episode.tokens
        logits = model(mx.array([sequence]))[0, len(episode.prompt_ids) - 1:-1].astype(mx.float32)
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        picked = np.array(mx.take_along_axis(logprobs, mx.array(episode.tokens)[:, None], axis=-1).squeeze(-1))
        # then on every model token it agrees with the behaviour logprob recorded while sampling
        mask = np.array(episode.mask, bool)
        assert np.abs(picked[mask] - np.array(episode.logprobs)[mask]).max() < 1e-4


def test_a_batch_advances_episodes_that_finish_at_different_turns_together(tiny_model):
    # given rows whose episodes last 1, 2 and 3 turns, two samples each
    model, tokenizer = tiny_model
    engine = CountingEngine(model, tokenizer)
    rows = [{"prompt": "a", "turns": 1}, {"prompt": "b", "turns": 2}, {"prompt": "c", "turns": 3}]
    task = make_task(tokenizer, rows, 2, 1.0)
    # when they roll out
    results = run_episodes(engine, task, [], ScriptedEnv, SamplingParams(max_tokens=24, stop=STOPS, seed=1),
                           max_turns=4, max_total_tokens=400, observation_max_tokens=16)
    # then every round is one generate call over the episodes still running
    finished_by_turn = [e.turns for e, _ in results]
    assert [e.finish_reason for e, _ in results] == ["stop"] * 6, finished_by_turn
    assert finished_by_turn == [1, 1, 2, 2, 3, 3]
    assert engine.batches == [6, 4, 2]


def test_rollout_dispatches_to_the_tool_env_and_rewards_the_final_answer(tiny_model):
    # given a task whose env is the tools env (what the trainer builds from cfg.env)
    from lazarus.config import EnvConfig
    from lazarus.env.rewards import accuracy_reward

    model, tokenizer = tiny_model
    env = EnvConfig(name="tools", tools=["calculator"], max_turns=2, max_total_tokens=64,
                    turn_penalty=0.1).model_dump()
    task = make_task(tokenizer, [{"prompt": "What is 2 * 3?", "answer": "6"}], 4, 1.0)
    task.env = env
    # when the plain rollout entry point runs it
    trajectories = rollout(Engine(model, tokenizer), task, [RewardFunction("accuracy", accuracy_reward)],
                           policy_version=2, actor_id="a1")
    # then each trajectory carries the episode (the tools were described in the prompt), its mask, its counters
    assert len(trajectories) == 4
    for t in trajectories:
        assert len(t.prompt_ids) > len(task.prompts[0])  # the tools system message went into the prompt
        assert set(t.reward_components) == {"accuracy", "env"}
        assert t.reward == pytest.approx(t.reward_components["accuracy"] + t.reward_components["env"])
        assert {"turns", "tool_calls", "failed_calls", "failures"} <= set(t.info)
        assert t.policy_version == 2 and t.actor_id == "a1" and len(t.loss_mask) == len(t.completion_ids)
        assert t.from_bytes(t.to_bytes()).info["turns"] == t.info["turns"]


def test_trajectories_of_marks_env_tokens_with_mask_zero(tiny_model):
    model, tokenizer = tiny_model
    task = make_task(tokenizer, [{"prompt": "x", "turns": 2}], 2, 1.0)
    params = SamplingParams(max_tokens=24, stop=STOPS, seed=2)
    results = run_episodes(Engine(model, tokenizer), task, [], ScriptedEnv, params, max_turns=2,
                           max_total_tokens=400, observation_max_tokens=16)
    for t, (e, _) in zip(trajectories_of(results, task, policy_version=0, actor_id="x", end_version=0), results):
        assert t.loss_mask.tolist() == e.mask and t.num_model_tokens == sum(e.mask)
        assert (t.behavior_logprobs[t.loss_mask == 0] == 0).all()


def test_kv_cache_continuation_gives_the_same_episodes_as_re_prefilling(tiny_model):
    # given an engine that can continue from a sequence's KV cache (skipped where it cannot)
    from lazarus.env.multiturn import supports_cache_reuse

    model, tokenizer = tiny_model
    engine = Engine(model, tokenizer)
    if not supports_cache_reuse(engine):
        pytest.skip("this engine's generate() takes no caches=")
    task = make_task(tokenizer, [{"prompt": "What is 12 * 7?"}, {"prompt": "Hello there"}], 2, 0.0)
    params = SamplingParams(temperature=0.0, max_tokens=24, stop=STOPS)

    def episodes(reuse):
        results = run_episodes(engine, task, [], ScriptedEnv, params, max_turns=3, max_total_tokens=400,
                               observation_max_tokens=16, reuse_cache=reuse)
        return [(e.tokens, e.mask) for e, _ in results], [e.logprobs for e, _ in results]

    # when the same greedy episodes run from the cache and by re-prefilling the history
    (cached, cached_logprobs), (reprefilled, reprefilled_logprobs) = episodes(True), episodes(False)
    # then the ids and masks are the same, and the logprobs agree
    assert cached == reprefilled
    for a, b in zip(cached_logprobs, reprefilled_logprobs):
        assert np.abs(np.array(a) - np.array(b)).max() < 1e-4
