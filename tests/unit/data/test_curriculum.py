"""Curricula by step and by rolling accuracy, multi-task mixtures, and the math levels they sample."""

import json

import numpy as np
import pytest

from lazarus.algorithms.advantages import groups_with_signal
from lazarus.config import load_config
from lazarus.data.curriculum import (
    DifficultySchedule,
    TaskMixture,
    curriculum_batch,
    level_pools,
    per_task_means,
    task_counts,
)

DIFFICULTIES = [1] * 10 + [2] * 10 + [3] * 10


def test_a_step_schedule_moves_to_each_level_at_its_step():
    schedule = DifficultySchedule([1, 2, 3], "step", steps=[10, 25])

    assert [schedule.level(s) for s in (0, 9, 10, 24, 25, 100)] == [1, 1, 2, 2, 3, 3]


def test_an_accuracy_schedule_promotes_when_the_window_is_full_and_accurate_and_demotes_below_the_floor():
    schedule = DifficultySchedule([1, 2, 3], "accuracy", promote_at=0.75, demote_at=0.2, window=4)

    schedule.observe([1, 1, 1])  # window not full yet
    assert schedule.level(0) == 1
    schedule.observe([0])  # 3/4 = 0.75
    assert schedule.level(1) == 2
    schedule.observe([0, 0, 0, 1])  # 0.25: neither
    assert schedule.level(2) == 2
    schedule.observe([0])  # last four 0, 0, 1, 0 = 0.25 -> still not below 0.2
    schedule.observe([0])  # 0, 1, 0, 0 -> 0.25
    schedule.observe([0, 0])  # 0, 0, 0, 0 -> demote
    assert schedule.level(3) == 1


def test_an_accuracy_schedule_resumes_from_its_state():
    schedule = DifficultySchedule([1, 2], "accuracy", promote_at=0.5, window=4)
    schedule.observe([1, 0, 1])
    resumed = DifficultySchedule([1, 2], "accuracy", promote_at=0.5, window=4)

    resumed.load_state(json.loads(json.dumps(schedule.state())))
    resumed.observe([1])

    assert resumed.level(0) == 2


def test_curriculum_batches_draw_the_current_level_plus_a_mix_of_passed_levels():
    pools = level_pools(DIFFICULTIES, [1, 2, 3])
    schedule = DifficultySchedule([1, 2, 3], "step", steps=[5, 10])

    early = curriculum_batch(pools, schedule, step=0, n=8, seed=0, mix=0.25)
    late = curriculum_batch(pools, schedule, step=12, n=8, seed=0, mix=0.25)

    assert {DIFFICULTIES[i] for i in early} == {1}
    assert [DIFFICULTIES[i] for i in late].count(3) == 6
    assert {DIFFICULTIES[i] for i in late} - {3} <= {1, 2}
    assert late == curriculum_batch(pools, schedule, step=12, n=8, seed=0, mix=0.25)  # (seed, step) decide


def test_rows_without_a_known_difficulty_are_an_error_naming_the_row():
    with pytest.raises(ValueError, match="row 3: difficulty missing"):
        level_pools([1, 2, None, 1], [1, 2])


@pytest.mark.parametrize("weights, n, expected", [
    ({"math": 1.0, "tools": 1.0}, 7, {"math": 4, "tools": 3}),
    ({"math": 3.0, "tools": 1.0}, 8, {"math": 6, "tools": 2}),
    ({"a": 1.0, "b": 1.0, "c": 1.0}, 4, {"a": 2, "b": 1, "c": 1}),
])
def test_task_counts_split_a_batch_by_weight_exactly(weights, n, expected):
    assert task_counts(weights, n) == expected


def test_a_task_mixture_is_reproducible_and_stays_inside_each_task():
    mixture = TaskMixture({"math": 5, "tools": 3}, {"math": 2.0, "tools": 1.0}, seed=1)

    batch = mixture.batch(step=4, n=9)

    assert batch == mixture.batch(step=4, n=9)
    assert [t for t, _ in batch].count("math") == 6
    assert all(i < {"math": 5, "tools": 3}[t] for t, i in batch)


def test_per_task_means_skip_nan_and_name_each_task():
    means = per_task_means([1.0, 0.0, np.nan, 0.5], ["math", "math", "tools", "tools"], "reward")

    assert means == {"reward/math": 0.5, "reward/tools": 0.5}


def test_dynamic_sampling_keeps_only_groups_whose_rewards_differ():
    keep = groups_with_signal([1, 1, 0, 1, 0.5, 0.5], [7, 7, 8, 8, 9, 9])

    assert keep.tolist() == [False, False, True, True, False, False]


def test_generate_math_with_a_list_of_levels_writes_a_difficulty_column(tmp_path):
    from lazarus.runtime.local import ensure_data

    cfg = load_config(None, [f"data.train={tmp_path}/data/rl_train.jsonl",
                             "data.generate_math={train: 5, eval: 2, difficulty: [1, 3], kinds: [arithmetic]}"])

    ensure_data(cfg)

    rows = [json.loads(line) for line in (tmp_path / "data/rl_train.jsonl").read_text().splitlines()]
    assert [r["difficulty"] for r in rows] == [1] * 5 + [3] * 5
    assert len((tmp_path / "data/rl_eval.jsonl").read_text().splitlines()) == 4
    assert level_pools([r["difficulty"] for r in rows], [1, 3])[3].tolist() == [5, 6, 7, 8, 9]


@pytest.mark.parametrize("override, message", [
    ("data.curriculum={schedule: step, levels: [1, 2, 3], steps: [5]}", "steps must hold"),
    ("data.generate_math={difficulty: [1, 4]}", "difficulty must be"),
    ("rl.rewards=[{function: accuracy, task: nope}]", "rl.rewards.0.task"),
    ("data.curriculum={schedule: accuracy, promote_at: 0.5, demote_at: 0.6}", "demote_at"),
])
def test_inconsistent_curriculum_and_task_settings_are_config_errors(override, message):
    from lazarus.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_load_tasks_tags_every_prompt_with_its_task_and_mixes_by_weight(tmp_path):
    from lazarus.data.curriculum import load_tasks
    from lazarus.data.io import write_jsonl

    write_jsonl(tmp_path / "math.jsonl", [{"prompt": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(6)])
    write_jsonl(tmp_path / "chat.jsonl", [{"prompt": "hi"}, {"prompt": "hello"}])
    cfg = load_config(None, [f"data.tasks=[{{name: math, train: {tmp_path}/math.jsonl, weight: 3}}, "
                             f"{{name: chat, train: {tmp_path}/chat.jsonl, eval: {tmp_path}/chat.jsonl}}]"])

    train, held_out, mixture = load_tasks(cfg.data.tasks, seed=0)

    assert {r.columns["task"] for r in train["math"]} == {"math"}
    assert [r.columns["task"] for r in held_out["chat"]] == ["chat", "chat"] and "math" not in held_out
    assert [task for task, _ in mixture.batch(step=0, n=8)].count("math") == 6


def test_a_row_whose_task_column_disagrees_is_an_error_naming_the_row(tmp_path):
    from lazarus.data.curriculum import load_tasks
    from lazarus.data.io import write_jsonl
    from lazarus.data.records import DatasetError

    write_jsonl(tmp_path / "math.jsonl", [{"prompt": "a"}, {"prompt": "b", "task": "chat"}])
    cfg = load_config(None, [f"data.tasks=[{{name: math, train: {tmp_path}/math.jsonl}}]"])

    with pytest.raises(DatasetError, match=r"math.jsonl:2: task 'chat'"):
        load_tasks(cfg.data.tasks)
