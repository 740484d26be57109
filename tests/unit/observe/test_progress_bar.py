"""Progress: a live rich bar on a terminal; compact lines every N steps when disabled or not a terminal."""

import io

import mlx.core as mx
from rich.console import Console

from lazarus.observe.progress import Progress, format_eta, format_metrics


def test_disabled_progress_prints_compact_line_at_first_every_nth_and_last_step(capsys):
    # given a disabled progress over 10 steps, printing every 4
    with Progress(10, description="grpo", enabled=False, print_every=4) as progress:
        # when all steps report metrics
        for step in range(1, 11):
            progress.update(
                step, {"loss": 1.0 / step, "reward_mean": 0.1 * step, "kl": 0.01, "tokens_per_s": 1234.5}
            )
    lines = capsys.readouterr().out.splitlines()
    # then lines came for steps 1, 4, 8 and 10, each one line with step/total and the shown metrics
    assert [line.split()[2] for line in lines] == ["1/10", "4/10", "8/10", "10/10"]
    assert lines[1].startswith("grpo step 4/10 | loss 0.2500 | reward 0.400 | kl 0.0100 | 1,234 tok/s | ETA ")
    assert lines[-1].endswith("ETA 0:00:00")


def test_disabled_progress_prints_where_an_early_stopped_run_ended(capsys):
    with Progress(100, description="sft", enabled=False, print_every=50) as progress:
        progress.update(1, {"loss": 2.0})
        progress.update(7, {"loss": mx.array(1.5)})
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[2] for line in lines] == ["1/100", "7/100"]
    assert "loss 1.5000" in lines[-1]


def test_enabled_progress_falls_back_to_compact_lines_when_output_is_not_a_terminal():
    # given a console writing to a pipe-like buffer
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=False)
    # when an enabled progress is driven
    with Progress(2, description="dpo", console=console) as progress:
        progress.update(1, {"loss": 0.7})
        progress.update(2, {"loss": 0.6})
    # then it wrote plain lines, no terminal control codes
    assert buffer.getvalue().splitlines()[0].startswith("dpo step 1/2 | loss 0.7000")
    assert "\x1b[" not in buffer.getvalue()


def test_live_bar_on_a_terminal_shows_step_total_and_metrics():
    # given a terminal console
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=160, color_system=None)
    # when the bar is driven to the end
    with Progress(5, description="ppo", console=console) as progress:
        for step in range(1, 6):
            progress.update(step, {"loss": 0.5, "reward_mean": 0.75, "kl": 0.002, "tokens_per_s": 900})
    # then the final render holds the description, 5/5 and the metrics
    final = buffer.getvalue()
    assert "ppo" in final and "5/5" in final
    assert "loss 0.5000 | reward 0.750 | kl 0.0020 | 900 tok/s | ETA 0:00:00" in final


def test_resumed_progress_counts_eta_from_the_steps_this_run_made():
    progress = Progress(100, description="grpo", enabled=False, start_step=50)
    assert progress.eta_seconds(50) is None
    assert progress.eta_seconds(60) >= 0
    progress.close()


def test_format_metrics_uses_the_first_present_name_and_skips_missing_or_null():
    assert format_metrics({"reward": 1.0, "kl": None}) == "reward 1.000"
    assert format_metrics({}) == ""
    assert format_eta(3725.2) == "1:02:05" and format_eta(None) == "?"
