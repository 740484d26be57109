"""plot_run and `lazarus plot`: PNG curves per metric group plus an overview, from metrics.jsonl."""

import math

import numpy as np
import pytest
import typer
from matplotlib.image import imread
from typer.testing import CliRunner

from lazarus.cli.plot import plot
from lazarus.observe.metrics import MetricsFileError, MetricsLogger
from lazarus.observe.plots import group_metrics, plot_run


def write_synthetic_run(run_dir, steps=40):
    """A GRPO-like run: falling loss, rising reward, a NaN loss at step 7, eval accuracy every 10 steps."""
    rng = np.random.default_rng(0)
    with MetricsLogger(run_dir, tensorboard=False) as logger:
        for step in range(1, steps + 1):
            logger.log(
                step,
                {
                    "loss": math.nan if step == 7 else 2.0 / step + 0.05 * rng.standard_normal(),
                    "reward_mean": 1 - math.exp(-step / 10),
                    "reward_std": 0.3,
                    "kl": 0.001 * step,
                    "entropy": 1.5 - 0.01 * step,
                    "clip_frac_low": 0.01,
                    "clip_frac_high": 0.02,
                    "completion_length": 40 + step,
                    "tokens_per_s": 900 + rng.standard_normal(),
                    "step_time": 0.5,
                    "peak_memory_gb": 0.3,
                    "grad_norm": 1.0,
                },
            )
            if step % 10 == 0:
                logger.log(step, {"accuracy": step / steps})


def test_plot_run_writes_a_valid_png_per_group_and_an_overview(tmp_path):
    # given a run directory with a synthetic metrics.jsonl
    with pytest.warns(RuntimeWarning, match="'loss'"):
        write_synthetic_run(tmp_path / "run")
    # when it is plotted
    written = plot_run(tmp_path / "run")
    # then one PNG per group plus the overview lands in run/plots, each a real, non-blank image
    expected = [
        "loss",
        "reward",
        "accuracy",
        "kl",
        "entropy",
        "clip",
        "completion_length",
        "tokens_per_s",
        "step_time",
        "memory",
        "grad_norm",
        "overview",
    ]
    assert [path.stem for path in written] == expected
    for path in written:
        assert path.parent == tmp_path / "run" / "plots"
        pixels = imread(path)
        assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
        assert pixels.std() > 0.01  # something was drawn
    assert not [p for p in written[0].parent.iterdir() if p.name.endswith(".tmp")]


def test_plot_run_with_keys_and_out_dir_plots_only_those(tmp_path):
    with pytest.warns(RuntimeWarning):
        write_synthetic_run(tmp_path, steps=8)
    written = plot_run(tmp_path, out_dir=tmp_path / "pngs", keys=["kl", "reward_mean"])
    assert [path.name for path in written] == ["reward.png", "kl.png", "overview.png"]
    assert all(path.parent == tmp_path / "pngs" for path in written)


def test_plot_run_unknown_key_names_it_and_what_exists(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        logger.log(1, {"loss": 1.0})
    with pytest.raises(KeyError, match="'rewrad'.*loss"):
        plot_run(tmp_path, keys=["rewrad"])


def test_plot_run_without_metrics_file_or_records_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        plot_run(tmp_path)
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(MetricsFileError, match="no records"):
        plot_run(tmp_path)
    assert not (tmp_path / "plots").exists()


def test_metrics_are_grouped_by_name():
    groups = group_metrics(
        [
            "policy_loss",
            "value_loss",
            "reward_correctness_mean",
            "approx_kl",
            "clip_fraction_high",
            "advantage_std",
            "tokens_per_sec",
            "rss_gb",
            "lr",
            "foo",
        ]
    )
    assert [(stem, names) for stem, _, names in groups] == [
        ("loss", ["policy_loss", "value_loss"]),
        ("reward", ["reward_correctness_mean"]),
        ("kl", ["approx_kl"]),
        ("clip", ["clip_fraction_high"]),
        ("advantage", ["advantage_std"]),
        ("tokens_per_s", ["tokens_per_sec"]),
        ("memory", ["rss_gb"]),
        ("learning_rate", ["lr"]),
        ("other", ["foo"]),
    ]


def cli():
    app = typer.Typer()
    app.command()(plot)
    return app


def test_plot_command_prints_the_files_it_wrote(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        for step in range(1, 4):
            logger.log(step, {"loss": 1.0 / step, "reward_mean": step / 3})
    result = CliRunner().invoke(cli(), [str(tmp_path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        str(tmp_path / "out" / f"{n}.png") for n in ("loss", "reward", "overview")
    ]


def test_plot_command_on_a_corrupt_file_prints_one_line_and_exits_2(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(
        '{"step": 1, "time": 0, "loss": 1}\n{oops\n{"step": 3, "time": 0}\n'
    )
    result = CliRunner().invoke(cli(), [str(tmp_path)])
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"error: {tmp_path / 'metrics.jsonl'}:2: corrupt metrics record"
    )
    assert result.stdout == ""


def test_plot_command_on_a_missing_run_dir_exits_2(tmp_path):
    result = CliRunner().invoke(cli(), [str(tmp_path / "missing")])
    assert result.exit_code == 2 and "metrics.jsonl" in result.stderr


def test_runtime_metrics_get_their_own_figures():
    from lazarus.observe.plots import group_metrics

    groups = group_metrics(["staleness_mean", "staleness_max", "weight_sync_ms", "weight_sync_bytes", "dropped_stale",
                            "requeued_tasks", "queue_groups", "wait_for_batch_s", "actor_a0_tokens_per_s"])
    by_metric = {m: stem for stem, _, metrics in groups for m in metrics}
    assert by_metric["staleness_max"] == by_metric["staleness_mean"] == "staleness"
    assert by_metric["weight_sync_ms"] == by_metric["weight_sync_bytes"] == "weight_sync"
    assert by_metric["dropped_stale"] == by_metric["requeued_tasks"] == by_metric["queue_groups"] == "runtime"
    assert by_metric["wait_for_batch_s"] == "step_time" and by_metric["actor_a0_tokens_per_s"] == "tokens_per_s"
