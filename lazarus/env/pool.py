"""Reward scoring in a pool of workers (`runtime.env_workers: N`), so a slow reward does not hold generation.

`PooledScorer` has the signature of `lazarus.env.rewards.score` and is passed to `rollout(..., scorer=)`:
it cuts one batch of completions into N contiguous slices, scores the slices concurrently on an executor,
and puts the totals and per-function components back in order. Reward functions keep TRL's contract:
each completion is scored on its own, so slicing does not change a single value.

The executor is anything with `submit(fn, *args) -> concurrent.futures.Future`: `process_pool(N)` here
(the process launcher and lazarus-actor), or the Ray launcher's pool of Ray actors. Reward functions
travel to the workers by reference (`module:function`), so they must be importable there.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import Executor, ProcessPoolExecutor

import numpy as np

from lazarus.env.rewards import RewardFunction, score
from lazarus.errors import LazarusError


class ScoringError(LazarusError):
    """A reward function failed in a scoring worker; names the function's slice and the cause."""


def process_pool(workers: int) -> ProcessPoolExecutor:
    """N scoring processes, started with `spawn` (no copy of the actor's model or threads)."""
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))


def slices(n: int, parts: int) -> list[tuple[int, int]]:
    """`parts` contiguous, near-equal [start, end) ranges covering range(n) (fewer when n < parts)."""
    parts = max(1, min(parts, n))
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(parts) if bounds[i] < bounds[i + 1]]


class PooledScorer:
    """`score(...)` with the completions of one call spread over `workers` slices scored concurrently."""

    def __init__(self, executor: Executor, workers: int):
        self.executor = executor
        self.workers = workers

    def __call__(self, reward_functions: list[RewardFunction], prompts: list, completions: list[str],
                 completion_ids: list[list[int]], columns: list[dict]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        ranges = slices(len(completions), self.workers)
        if len(ranges) <= 1:
            return score(reward_functions, prompts, completions, completion_ids, columns)
        futures = [self.executor.submit(score, reward_functions, prompts[a:b], completions[a:b],
                                        completion_ids[a:b], columns[a:b]) for a, b in ranges]
        parts = []
        for (a, b), future in zip(ranges, futures):
            try:
                parts.append(future.result())
            except LazarusError:
                raise
            except Exception as e:
                raise ScoringError(f"runtime.env_workers: scoring completions {a}..{b - 1} failed: "
                                   f"{type(e).__name__}: {e}") from None
        total = np.concatenate([p[0] for p in parts])
        components = {rf.name: np.concatenate([p[1][rf.name] for p in parts]) for rf in reward_functions}
        return total, components

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
