"""Which prompts a step trains on: difficulty curricula for the math task, and multi-task mixtures.

A curriculum picks the difficulty level of each step's prompts from the `difficulty` column of the RL
prompt rows (`write_math_levels` writes it):

- by step: level i starts at training step `steps[i-1]` (a fixed schedule, as curriculum RL recipes such
  as Kimi k1.5 and DeepScaleR stage their data);
- by rolling accuracy: move up a level when the mean reward of the current level's last `window`
  completions reaches `promote_at`, down when it falls below `demote_at` (a self-paced curriculum).

`mix` draws that share of each batch from the levels already passed, so they are not forgotten.

A `TaskMixture` splits each batch's prompts over several tasks by weight (largest remainder, so the
counts are exact and the same every time), and `per_task_means` reports a metric per task.
Every choice depends only on (seed, step) and the schedule's state, which `state()` saves for resume.
"""

from __future__ import annotations

from collections import deque
from typing import Sequence

import numpy as np


class DifficultySchedule:
    """The current difficulty level, by step or by the rolling accuracy of the current level."""

    def __init__(self, levels: Sequence[int], schedule: str = "step", steps: Sequence[int] = (),
                 promote_at: float = 0.8, demote_at: float | None = None, window: int = 128):
        if schedule not in ("none", "step", "accuracy"):
            raise ValueError(f"schedule must be none, step or accuracy, got {schedule!r}")
        if not levels:
            raise ValueError("levels must not be empty")
        if schedule == "step" and (len(steps) != len(levels) - 1 or list(steps) != sorted(steps)):
            raise ValueError(f"steps must hold len(levels) - 1 = {len(levels) - 1} increasing steps, got {list(steps)}")
        self.levels, self.schedule, self.steps = list(levels), schedule, list(steps)
        self.promote_at, self.demote_at, self.window = promote_at, demote_at, window
        self.index = 0
        self.recent: deque[float] = deque(maxlen=window)

    def level(self, step: int) -> int | None:
        """The level of `step`'s prompts (None: no schedule, every level)."""
        if self.schedule == "none":
            return None
        if self.schedule == "step":
            self.index = sum(step >= boundary for boundary in self.steps)
        return self.levels[self.index]

    def observe(self, rewards: Sequence[float]) -> None:
        """Rewards (1 = correct) of completions of the current level; may move the level (accuracy schedule)."""
        if self.schedule != "accuracy":
            return
        self.recent.extend(float(r) for r in rewards)
        if len(self.recent) < self.window:
            return
        accuracy = float(np.mean(self.recent))
        if accuracy >= self.promote_at and self.index < len(self.levels) - 1:
            self.index += 1
            self.recent.clear()
        elif self.demote_at is not None and accuracy < self.demote_at and self.index > 0:
            self.index -= 1
            self.recent.clear()

    def rolling_accuracy(self) -> float | None:
        return float(np.mean(self.recent)) if self.recent else None

    def state(self) -> dict:
        return {"index": self.index, "recent": list(self.recent)}

    def load_state(self, state: dict) -> None:
        if not 0 <= int(state["index"]) < len(self.levels):
            raise ValueError(f"curriculum state index {state['index']} is outside the {len(self.levels)} levels")
        self.index = int(state["index"])
        self.recent = deque((float(r) for r in state.get("recent", [])), maxlen=self.window)


def level_pools(difficulties: Sequence[int | None], levels: Sequence[int]) -> dict[int, np.ndarray]:
    """Row indices of each level; every level must have rows, and every row a known level."""
    values = np.array([-1 if d is None else int(d) for d in difficulties])
    unknown = sorted(set(values.tolist()) - set(levels))
    if unknown:
        row = int(np.flatnonzero(np.isin(values, unknown))[0])
        raise ValueError(f"row {row + 1}: difficulty {values[row] if values[row] >= 0 else 'missing'} is not one "
                         f"of the curriculum levels {list(levels)} (the rows need a `difficulty` column)")
    pools = {level: np.flatnonzero(values == level) for level in levels}
    empty = [level for level, pool in pools.items() if len(pool) == 0]
    if empty:
        raise ValueError(f"no prompt has difficulty {empty[0]}: the data has levels {sorted(set(values.tolist()))}")
    return pools


def curriculum_batch(pools: dict[int, np.ndarray], schedule: DifficultySchedule, step: int, n: int, *,
                     seed: int, mix: float = 0.0, draw: int | None = None) -> list[int]:
    """`n` row indices for `step`: from the current level, with a `mix` share from the levels below it.

    The rows depend on (seed, draw) only, `draw` defaulting to `step`; a caller that draws several
    batches for one step (dynamic sampling refills them) numbers its draws so that they differ.
    """
    rng = np.random.default_rng([seed, step if draw is None else draw, 7])
    level = schedule.level(step)
    if level is None:
        everything = np.concatenate(list(pools.values()))
        return rng.choice(everything, size=n, replace=len(everything) < n).tolist()
    easier = [pools[lv] for lv in schedule.levels[: schedule.levels.index(level)]]
    n_easier = int(round(mix * n)) if easier else 0
    current = pools[level]
    chosen = rng.choice(current, size=n - n_easier, replace=len(current) < n - n_easier).tolist()
    if n_easier:
        passed = np.concatenate(easier)
        chosen += rng.choice(passed, size=n_easier, replace=len(passed) < n_easier).tolist()
    return chosen


def task_counts(weights: dict[str, float], n: int) -> dict[str, int]:
    """Split `n` prompts over tasks by weight: floors, then the largest remainders (ties: task order)."""
    if not weights or any(w <= 0 for w in weights.values()):
        raise ValueError(f"task weights must be positive, got {weights}")
    total = sum(weights.values())
    exact = {name: n * w / total for name, w in weights.items()}
    counts = {name: int(np.floor(x)) for name, x in exact.items()}
    order = sorted(weights, key=lambda name: -(exact[name] - counts[name]))
    for name in order[: n - sum(counts.values())]:
        counts[name] += 1
    return counts


class TaskMixture:
    """Each step's prompts drawn from several tasks' prompt sets in proportion to their weights."""

    def __init__(self, sizes: dict[str, int], weights: dict[str, float], seed: int = 0):
        if set(sizes) != set(weights):
            raise ValueError(f"tasks {sorted(sizes)} and weights {sorted(weights)} differ")
        empty = [name for name, size in sizes.items() if size < 1]
        if empty:
            raise ValueError(f"task {empty[0]!r} has no prompts")
        self.sizes, self.weights, self.seed = dict(sizes), dict(weights), seed

    def batch(self, step: int, n: int) -> list[tuple[str, int]]:
        """(task, row index) pairs for `step`, task by task in the order given."""
        rng = np.random.default_rng([self.seed, step, 11])
        picks = []
        for name, count in task_counts(self.weights, n).items():
            size = self.sizes[name]
            picks += [(name, int(i)) for i in rng.choice(size, size=count, replace=size < count)]
        return picks


def per_task_means(values: Sequence[float], tasks: Sequence[str], prefix: str) -> dict[str, float]:
    """{f"{prefix}/{task}": mean of that task's values}, for metrics per task (NaN values are skipped)."""
    values = np.asarray(values, np.float64)
    tasks = np.asarray(tasks)
    if values.shape != tasks.shape:
        raise ValueError(f"{values.shape[0]} values but {tasks.shape[0]} task names")
    out = {}
    for task in dict.fromkeys(tasks.tolist()):
        selected = values[(tasks == task) & ~np.isnan(values)]
        if selected.size:
            out[f"{prefix}/{task}"] = float(selected.mean())
    return out


def load_tasks(tasks, seed: int = 0):
    """`data.tasks` entries -> (train records by task, eval records by task, their TaskMixture).

    Each record gets a `task` column with its task's name (what per-task rewards and metrics select
    on); a row that already has a different `task` is an error naming the file and row.
    """
    from lazarus.data.records import DatasetError, read_prompts

    train, held_out = {}, {}
    for task in tasks:
        for split, path, out in (("train", task.train, train), ("eval", task.eval, held_out)):
            if path is None:
                continue
            records = read_prompts(path)
            for row, record in enumerate(records, start=1):
                if record.columns.get("task", task.name) != task.name:
                    raise DatasetError(f"{path}:{row}: task {record.columns['task']!r} differs from data.tasks "
                                       f"name {task.name!r}")
                record.columns["task"] = task.name
            out[task.name] = records
    mixture = TaskMixture({name: len(records) for name, records in train.items()},
                          {task.name: task.weight for task in tasks}, seed=seed)
    return train, held_out, mixture
