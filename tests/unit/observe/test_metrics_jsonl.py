"""metrics.jsonl: one fsynced JSON line per step, torn-line tolerance, resume without duplicate steps."""

import json
import warnings

import mlx.core as mx
import numpy as np
import pytest

from lazarus.observe.metrics import MetricsFileError, MetricsLogger, read_metrics


def test_log_appends_one_line_per_step_readable_before_close(tmp_path):
    # given a logger on a fresh run directory
    logger = MetricsLogger(tmp_path / "run", tensorboard=False)
    # when two steps are logged and the file is read while the logger is still open
    logger.log(1, {"loss": 2.5})
    logger.log(2, {"loss": 2.0, "reward_mean": 0.25})
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    # then each step is already on disk as its own JSON line with step and time
    assert [json.loads(line)["step"] for line in lines] == [1, 2]
    records = read_metrics(tmp_path / "run")
    assert records[1]["loss"] == 2.0 and records[1]["reward_mean"] == 0.25
    assert all(isinstance(record["time"], float) for record in records)
    logger.close()


def test_mx_and_numpy_scalars_are_written_as_plain_numbers(tmp_path):
    # given metrics computed as mx arrays and numpy scalars
    metrics = {
        "loss": mx.array(1.5),
        "kl": mx.array([0.125], dtype=mx.float16),
        "entropy": np.float32(0.75),
        "tokens": np.int64(4096),
        "clip_frac_high": np.array(0.5),
    }
    # when logged
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        logger.log(3, metrics)
    # then the JSON holds plain numbers with their values
    record = read_metrics(tmp_path)[0]
    assert record["loss"] == 1.5 and record["kl"] == 0.125 and record["entropy"] == 0.75
    assert record["tokens"] == 4096 and isinstance(record["tokens"], int)
    assert record["clip_frac_high"] == 0.5


def test_non_scalar_array_metric_is_rejected_naming_the_metric(tmp_path):
    with (
        MetricsLogger(tmp_path, tensorboard=False) as logger,
        pytest.raises(TypeError, match="'advantages'.*shape"),
    ):
        logger.log(1, {"advantages": mx.array([1.0, 2.0])})
    assert read_metrics(tmp_path) == []


def test_nan_and_inf_are_written_as_null_with_one_warning(tmp_path):
    # given a logger and steps whose loss is NaN, then inf
    # when both are logged
    with MetricsLogger(tmp_path, tensorboard=False) as logger, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        logger.log(1, {"loss": float("nan"), "reward_mean": 1.0})
        logger.log(2, {"loss": mx.array(float("inf"))})
    # then they are stored as null, the file stays strict JSON, and the warning came once, naming the metric
    text = (tmp_path / "metrics.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text
    records = read_metrics(tmp_path)
    assert records[0]["loss"] is None and records[1]["loss"] is None and records[0]["reward_mean"] == 1.0
    non_finite_warnings = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(non_finite_warnings) == 1 and "'loss'" in str(non_finite_warnings[0].message)


def test_torn_last_line_is_skipped_by_reader_and_cut_before_appending(tmp_path):
    # given a file whose last line was cut off by a crash
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "time": 0, "loss": 3.0}\n{"step": 2, "time": 0, "lo')
    # when it is read, then the torn record is skipped
    assert [r["step"] for r in read_metrics(tmp_path)] == [1]
    # when the run is reopened and logs the step it lost
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        logger.log(2, {"loss": 2.0})
    # then the file is whole again: every line parses, and step 2 appears once
    lines = path.read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2]


def test_whole_last_record_missing_its_newline_is_kept_when_appending(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "time": 0, "loss": 3.0}')
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        logger.log(2, {"loss": 2.0})
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]


def test_corrupt_middle_line_raises_naming_file_and_line(tmp_path):
    # given a corrupt line between two good ones
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "time": 0}\nnot json\n{"step": 3, "time": 0}\n')
    # then reading, and reopening for append, both name file:line
    with pytest.raises(MetricsFileError, match=r"metrics\.jsonl:2"):
        read_metrics(tmp_path)
    with pytest.raises(MetricsFileError, match=r"metrics\.jsonl:2"):
        MetricsLogger(tmp_path, tensorboard=False)
    assert path.read_text().count("\n") == 3  # nothing was rewritten


def test_reading_a_missing_metrics_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        read_metrics(tmp_path / "nowhere")


def test_reopening_a_run_appends_after_existing_steps(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        logger.log(1, {"loss": 3.0})
        logger.log(2, {"loss": 2.0})
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        assert logger.last_step == 2
        logger.log(3, {"loss": 1.0})
    assert [r["loss"] for r in read_metrics(tmp_path)] == [3.0, 2.0, 1.0]


def test_resume_truncate_after_drops_later_steps_so_none_is_duplicated(tmp_path):
    # given a run that logged steps 1..5 and then crashed; its last checkpoint is step 3
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        for step in range(1, 6):
            logger.log(step, {"loss": 10.0 - step})
    # when the resumed run truncates after step 3 and logs 4 and 5 again
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        logger.truncate_after(3)
        assert logger.last_step == 3
        logger.log(4, {"loss": 0.4})
        logger.log(5, {"loss": 0.5})
    # then every step appears once, with the resumed run's values after step 3
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    assert [r["loss"] for r in records] == [9.0, 8.0, 7.0, 0.4, 0.5]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_resume_without_truncate_refuses_to_log_an_earlier_step(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        logger.log(5, {"loss": 1.0})
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        with pytest.raises(ValueError, match=r"step 4 is below the last logged step 5.*truncate_after\(3\)"):
            logger.log(4, {"loss": 1.0})
        logger.log(5, {"eval_accuracy": 0.5})  # a second record for the same step is fine
    assert [r["step"] for r in read_metrics(tmp_path)] == [5, 5]


def test_reserved_names_are_rejected(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as logger, pytest.raises(ValueError, match="'step'"):
        logger.log(1, {"step": 3})


@pytest.mark.skipif(
    any(__import__("importlib").util.find_spec(m) for m in ("tensorboardX", "torch")),
    reason="a TensorBoard writer is installed",
)
def test_tensorboard_requested_but_not_installed_is_a_clear_error(tmp_path):
    with pytest.raises(ImportError, match="tensorboardX"):
        MetricsLogger(tmp_path, tensorboard=True)
    assert not (tmp_path / "tensorboard").exists()


def test_tensorboard_writes_event_files_when_installed(tmp_path):
    pytest.importorskip("tensorboardX")
    with MetricsLogger(tmp_path, tensorboard=True) as logger:
        logger.log(1, {"loss": 1.0, "kl": 0.5})
    events = [p for p in (tmp_path / "tensorboard").iterdir() if p.name.startswith("events.out.tfevents")]
    assert len(events) == 1 and b"loss" in events[0].read_bytes() and b"kl" in events[0].read_bytes()


@pytest.mark.skipif(__import__("importlib").util.find_spec("wandb") is not None, reason="wandb is installed")
def test_wandb_requested_but_not_installed_is_a_clear_error(tmp_path):
    with pytest.raises(ImportError, match="wandb_project='lazarus'.*pip install wandb"):
        MetricsLogger(tmp_path, tensorboard=False, wandb_project="lazarus")


def test_truncate_after_a_step_beyond_the_last_keeps_everything(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        logger.log(1, {"loss": 1.0})
        logger.truncate_after(10)
        logger.log(2, {"loss": 0.5})
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]
