"""The scoring pool gives exactly `score`'s result, computed in worker processes, in the completions' order."""

from __future__ import annotations

import numpy as np
import pool_rewards
import pytest

from lazarus.env.pool import PooledScorer, ScoringError, process_pool, slices
from lazarus.env.rewards import RewardFunction, score


@pytest.fixture(scope="module")
def pool():
    executor = process_pool(3)
    yield executor
    executor.shutdown(wait=True)


def batch(n: int):
    completions = [f"completion {i} " + "x" * (i % 5) + str(i % 3) for i in range(n)]
    columns = [{"prompt": f"p{i // 4}", "answer": None if i % 7 == 0 else i % 3} for i in range(n)]
    return [c["prompt"] for c in columns], completions, [[i] for i in range(n)], columns


def test_slices_cover_every_index_once_in_order():
    for n, parts in ((10, 3), (2, 4), (1, 1), (7, 7), (0, 3)):
        covered = [i for a, b in slices(n, parts) for i in range(a, b)]
        assert covered == list(range(n))
        assert len(slices(n, parts)) == min(parts, n)


def test_pooled_scoring_equals_in_process_scoring_and_runs_in_the_worker_processes(pool, tmp_path, monkeypatch):
    # given two weighted reward functions (one returning None for some rows) and a batch of 10 completions
    monkeypatch.setenv("POOL_TEST_MARKS", str(tmp_path))
    functions = [RewardFunction("length", pool_rewards.length_reward, 0.5),
                 RewardFunction("suffix", pool_rewards.answer_is_suffix, 2.0)]
    prompts, completions, ids, columns = batch(10)
    # when the batch is scored in the pool of 3 and in this process
    pooled_total, pooled_parts = PooledScorer(pool, 3)(functions, prompts, completions, ids, columns)
    marks = sorted(p.name for p in tmp_path.iterdir())
    for p in tmp_path.iterdir():
        p.unlink()
    total, parts = score(functions, prompts, completions, ids, columns)
    # then totals and every component are identical, NaN where a reward said None, in the same order
    np.testing.assert_array_equal(pooled_total, total)
    assert pooled_parts.keys() == parts.keys()
    for name in parts:
        np.testing.assert_array_equal(pooled_parts[name], parts[name])
    assert np.isnan(pooled_parts["suffix"][0])
    # and the three slices (4, 3, 3 completions) were scored by the worker processes, not by this one
    import os

    pids = {int(m.split("-")[0]) for m in marks}
    assert sorted(int(m.split("-")[1]) for m in marks) == [3, 3, 4]
    assert os.getpid() not in pids


def test_a_reward_that_fails_in_a_worker_is_one_error_naming_the_slice(pool):
    # given a reward function that raises
    functions = [RewardFunction("broken", pool_rewards.broken_reward)]
    prompts, completions, ids, columns = batch(6)
    # when the pool scores with it, then one ScoringError names the completions and the cause
    with pytest.raises(ScoringError, match=r"runtime.env_workers: scoring completions 0..1 failed: RuntimeError: "
                                           r"reward service down"):
        PooledScorer(pool, 3)(functions, prompts, completions, ids, columns)


def test_rollout_scores_through_the_scorer_it_is_given(tiny_model, pool):
    # given a tiny model's engine and a task of 2 prompts x 3 completions
    from lazarus.data.trajectory import RolloutTask, SamplingSettings
    from lazarus.env.rollout import rollout
    from lazarus.inference.engine import Engine

    model, tokenizer = tiny_model
    rows = [{"prompt": "1+1=", "answer": 2}, {"prompt": "2+2=", "answer": 4}]
    task = RolloutTask("t0", [tokenizer.encode(r["prompt"]) for r in rows], rows, ["g0", "g1"], 3,
                       SamplingSettings(temperature=1.0), max_tokens=6, policy_version=0, seed=7)
    functions = [RewardFunction("length", pool_rewards.length_reward)]
    # when the same task is rolled out with the default scorer and with the pool
    plain = rollout(Engine(model, tokenizer), task, functions, policy_version=0)
    pooled = rollout(Engine(model, tokenizer), task, functions, policy_version=0, scorer=PooledScorer(pool, 3))
    # then the same seeded completions get the same rewards
    assert [list(map(int, t.completion_ids)) for t in pooled] == [list(map(int, t.completion_ids)) for t in plain]
    assert [t.reward for t in pooled] == [t.reward for t in plain]
