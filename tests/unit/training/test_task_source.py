"""The coordinator draws RL prompts by the difficulty curriculum (by step, or by rolling accuracy) and by the
multi-task mixture, reports metrics per level and per task, and resumes the draw exactly; real runs of a
micro model on generated math."""

import json

import pytest

from lazarus.config import ConfigError
from lazarus.data.math import write_math_dataset, write_math_levels
from lazarus.runtime.local import run_training


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def steps(run_dir):
    """metrics.jsonl rows of training steps (the ones with a loss), by step."""
    return {m["step"]: m for m in metrics(run_dir) if "loss" in m}


@pytest.fixture(scope="session")
def levels_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("levels")
    write_math_levels(out, n_train=16, n_eval=4, levels=[1, 2, 3], kinds=["arithmetic"], seed=0)
    return out


@pytest.fixture(scope="session")
def second_task_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("second")
    write_math_dataset(out, n_train=16, n_eval=4, kinds=["comparison"], difficulty=1, seed=1)
    return out


def curriculum_config(make_config, levels_dir, *overrides, run="run"):
    return make_config("grpo", f"data.train={levels_dir}/rl_train.jsonl", f"data.eval={levels_dir}/rl_eval.jsonl",
                       "lora.enabled=true", *overrides, run=run)


def test_a_step_curriculum_draws_each_level_from_its_step(make_config, levels_dir, tmp_path):
    # given levels 1, 2, 3 starting at steps 0, 2 and 3
    cfg = curriculum_config(make_config, levels_dir, "data.curriculum={schedule: step, levels: [1, 2, 3], "
                            "steps: [2, 3]}")

    run_training(cfg)

    # then every prompt of step s (trained at version s - 1) is of that version's level
    history = steps(tmp_path / "run")
    drawn = {s: [history[s][f"prompts_at_level/{lv}"] for lv in (1, 2, 3)] for s in history}
    assert drawn == {1: [4, 0, 0], 2: [4, 0, 0], 3: [0, 4, 0], 4: [0, 0, 4]}
    assert [history[s]["curriculum_level"] for s in (1, 2, 3, 4)] == [1, 1, 2, 3]


def test_a_curriculum_mix_keeps_a_share_of_the_passed_levels(make_config, levels_dir, tmp_path):
    cfg = curriculum_config(make_config, levels_dir, "data.curriculum={schedule: step, levels: [1, 2, 3], "
                            "steps: [0, 0], mix: 0.5}", "training.max_steps=2")

    run_training(cfg)

    history = steps(tmp_path / "run")
    assert [history[1][f"prompts_at_level/{lv}"] for lv in (1, 2, 3)][2] == 2  # half at level 3
    assert sum(history[1][f"prompts_at_level/{lv}"] for lv in (1, 2)) == 2  # half from the levels passed


def test_an_accuracy_curriculum_moves_up_when_the_rolling_accuracy_of_its_level_reaches_promote_at(
        make_config, levels_dir, tmp_path):
    # given a reward every completion earns and a window of one batch (4 prompts x 4 completions)
    cfg = curriculum_config(make_config, levels_dir, "rl.rewards=[{function: 'scripted_rewards:always_right'}]",
                            "data.curriculum={schedule: accuracy, levels: [1, 2, 3], promote_at: 0.9, window: 16}",
                            "training.max_steps=3")

    run_training(cfg)

    # then each step's prompts are one level above the last: the previous batch filled the window at 100%
    history = steps(tmp_path / "run")
    assert [[history[s][f"prompts_at_level/{lv}"] for lv in (1, 2, 3)] for s in (1, 2, 3)] == \
        [[4, 0, 0], [0, 4, 0], [0, 0, 4]]
    assert history[1]["curriculum_level"] == 2  # moved up as the first batch came back


def test_an_accuracy_curriculum_does_not_move_before_its_window_is_full(make_config, levels_dir, tmp_path):
    cfg = curriculum_config(make_config, levels_dir, "rl.rewards=[{function: 'scripted_rewards:always_right'}]",
                            "data.curriculum={schedule: accuracy, levels: [1, 2, 3], promote_at: 0.9, window: 40}",
                            "training.max_steps=3")

    run_training(cfg)

    # 16 completions per step: the window of 40 is full after step 3, not before
    history = steps(tmp_path / "run")
    assert [history[s]["curriculum_level"] for s in (1, 2, 3)] == [1, 1, 2]
    assert [history[s]["prompts_at_level/1"] for s in (1, 2, 3)] == [4, 4, 4]


def test_a_resumed_curriculum_run_draws_what_the_uninterrupted_run_drew(make_config, levels_dir, tmp_path):
    # given an accuracy curriculum whose reward varies, so its window and level depend on every step before
    common = ["rl.rewards=[{function: 'scripted_rewards:even_length'}]", "training.save_every=2",
              "data.curriculum={schedule: accuracy, levels: [1, 2, 3], promote_at: 0.3, window: 24, mix: 0.25}"]
    run_training(curriculum_config(make_config, levels_dir, *common, run="full"))
    # when a run stops at step 2 and is resumed to step 4
    run_training(curriculum_config(make_config, levels_dir, *common, "training.max_steps=2", run="part"))
    run_training(curriculum_config(make_config, levels_dir, *common, run="part"), resume=tmp_path / "part")

    # then steps 3 and 4 drew the same levels, saw the same rolling accuracy and learned the same loss
    full, part = steps(tmp_path / "full"), steps(tmp_path / "part")
    keys = ["curriculum_level", "curriculum_rolling_accuracy", "reward_mean", "loss",
            *(f"prompts_at_level/{lv}" for lv in (1, 2, 3))]
    assert {m["curriculum_level"] for m in full.values()} != {1}  # the schedule did move
    for step in (3, 4):
        assert {k: part[step].get(k) for k in keys} == pytest.approx({k: full[step].get(k) for k in keys}, abs=1e-5)


def test_a_curriculum_over_rows_without_a_difficulty_column_is_a_config_error(make_config):
    cfg = make_config("grpo", "data.curriculum={schedule: step, levels: [1, 2], steps: [2]}")

    with pytest.raises(ConfigError, match=r"data.curriculum: .*rl_train.jsonl: row 1: difficulty missing"):
        run_training(cfg)


def multi_task_config(make_config, math_dir, second_task_dir, *overrides, run="run"):
    return make_config(
        "grpo", "data.train=null", "data.eval=null", "lora.enabled=true",
        f"data.tasks=[{{name: arithmetic, train: {math_dir}/rl_train.jsonl, eval: {math_dir}/rl_eval.jsonl, "
        f"weight: 3}}, {{name: comparison, train: {second_task_dir}/rl_train.jsonl, "
        f"eval: {second_task_dir}/rl_eval.jsonl}}]", *overrides, run=run)


def test_a_multi_task_run_draws_by_weight_scores_each_task_with_its_rewards_and_reports_each_task(
        make_config, math_dir, second_task_dir, tmp_path):
    # given arithmetic (weight 3) scored by accuracy, and comparison (weight 1) by a reward it always earns
    cfg = multi_task_config(make_config, math_dir, second_task_dir,
                            "rl.rewards=[{function: accuracy, task: arithmetic}, "
                            "{function: 'scripted_rewards:always_right', task: comparison}]",
                            "training.max_steps=2", "eval.num_prompts=8")

    run_training(cfg)

    history = steps(tmp_path / "run")
    for step in (1, 2):
        m = history[step]
        # then each batch of 4 prompts holds 3 arithmetic and 1 comparison prompt
        assert (m["prompts/arithmetic"], m["prompts/comparison"]) == (3, 1)
        # and each task got only its own reward
        assert m["reward_mean/comparison"] == 1.0
        assert m["reward_mean/arithmetic"] == pytest.approx(m["accuracy/arithmetic"])
        assert m["reward_mean"] == pytest.approx((3 * m["reward_mean/arithmetic"] + 1.0) / 4)
    final = metrics(tmp_path / "run")[-1]
    assert {"eval_accuracy/arithmetic", "eval_accuracy/comparison"} <= set(final)  # held-out, per task


def test_a_curriculum_with_data_tasks_is_a_config_error(make_config, math_dir, second_task_dir):
    cfg = multi_task_config(make_config, math_dir, second_task_dir,
                            "data.curriculum={schedule: step, levels: [1, 2], steps: [2]}")

    with pytest.raises(ConfigError, match=r"data.curriculum: .* with data.tasks"):
        run_training(cfg)


def test_a_missing_task_file_is_a_config_error_naming_the_task(make_config, math_dir, second_task_dir, tmp_path):
    cfg = multi_task_config(make_config, math_dir, tmp_path / "nowhere")

    with pytest.raises(ConfigError, match=r"data.tasks.1.train: .*nowhere/rl_train.jsonl does not exist"):
        run_training(cfg)
