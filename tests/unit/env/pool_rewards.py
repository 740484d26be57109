"""Reward functions for the scoring-pool tests, importable by the pool's spawned worker processes."""

from __future__ import annotations

import os
from pathlib import Path


def length_reward(prompts, completions, **kwargs) -> list[float]:
    """The completion's length, and a file per call naming the process that scored it."""
    marks = os.environ.get("POOL_TEST_MARKS")
    if marks:
        import uuid

        (Path(marks) / f"{os.getpid()}-{len(completions)}-{uuid.uuid4().hex}").touch()
    return [float(len(c)) for c in completions]


def answer_is_suffix(prompts, completions, answer, **kwargs) -> list[float | None]:
    """1.0 when the completion ends with the row's answer, None when the row has none."""
    return [None if a is None else float(c.endswith(str(a))) for c, a in zip(completions, answer)]


def broken_reward(prompts, completions, **kwargs) -> list[float]:
    raise RuntimeError("reward service down")
