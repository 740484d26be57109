"""Per-step training metrics: `metrics.jsonl` in the run directory always; TensorBoard and W&B when installed.

`metrics.jsonl` holds one JSON object per line, `{"step": ..., "time": ..., **metrics}`, each line flushed
and fsynced as it is written, so a crash loses at most the line being written. Reopening a run directory
appends; a resumed run first calls `truncate_after(step)` so the steps it repeats are not logged twice.
"""

from __future__ import annotations

from lazarus.errors import LazarusError
import json
import math
import os
import threading
import time
import warnings
from numbers import Real
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlx.core as mx
import numpy as np

from lazarus.data.io import atomic_writer

if TYPE_CHECKING:
    from typing_extensions import Self

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
RESERVED_KEYS = ("step", "time")


class MetricsFileError(LazarusError, ValueError):
    """`metrics.jsonl` is corrupt or holds no records; the message names the file and line."""


def metrics_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / METRICS_FILE


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The records of `run_dir/metrics.jsonl`, in file order.

    A torn last line (a crash while it was written) is skipped; a corrupt line anywhere else raises
    `MetricsFileError` naming `file:line`.
    """
    path = metrics_path(run_dir)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such metrics file")
    records, _ = _parse(path, path.read_bytes())
    return records


class MetricsLogger:
    """Appends one record per `log` call to `run_dir/metrics.jsonl`, mirrored to TensorBoard / W&B.

    tensorboard: None uses it when `tensorboardX` or `torch.utils.tensorboard` is importable; True
        requires it; False turns it off. Event files go to `run_dir/tensorboard/`.
    wandb_project: log to this W&B project as well (requires `wandb`).

    Steps never go backwards within a file: logging a step below the last one raises, because on resume
    the repeated steps must first be dropped with `truncate_after`. Several records may share a step
    (training and evaluation metrics logged separately, say).
    """

    def __init__(
        self, run_dir: str | Path, *, tensorboard: bool | None = None, wandb_project: str | None = None
    ):
        self.run_dir = Path(run_dir)
        self.path = metrics_path(self.run_dir)
        self._lock = threading.Lock()
        self._warned_non_finite = False
        # Check the optional sinks before touching any file, so a missing package leaves nothing behind.
        tensorboard_writer = _tensorboard_writer_class(tensorboard)
        wandb = _import_wandb(wandb_project) if wandb_project is not None else None
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.last_step = self._repair_and_last_step()
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (held open for the run)
        self._tensorboard = None
        if tensorboard_writer is not None:
            self._tensorboard = tensorboard_writer(str(self.run_dir / TENSORBOARD_DIR))
        self._wandb_run = None
        if wandb is not None:
            self._wandb_run = wandb.init(project=wandb_project, dir=str(self.run_dir), name=self.run_dir.name)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        """Append `{"step": step, "time": now, **metrics}`; scalars of any kind become JSON numbers."""
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
            raise TypeError(f"step must be an int, got {type(step).__name__}")
        step = int(step)
        values = {}
        # A loop, not a comprehension, so the non-finite warning's stacklevel points at our caller.
        for key, value in metrics.items():
            values[key] = self._to_json_number(key, value, step)
        record = {"step": step, "time": round(time.time(), 3), **values}
        line = json.dumps(record, allow_nan=False) + "\n"
        with self._lock:
            if self._file.closed:
                raise ValueError(f"{self.path}: logger is closed")
            if self.last_step is not None and step < self.last_step:
                raise ValueError(
                    f"{self.path}: step {step} is below the last logged step {self.last_step}; "
                    f"a resumed run calls truncate_after({step - 1}) first"
                )
            self._file.write(line)
            self._file.flush()
            os.fsync(self._file.fileno())
            self.last_step = step
        finite = {key: value for key, value in values.items() if value is not None}
        if self._tensorboard is not None:
            for key, value in finite.items():
                self._tensorboard.add_scalar(key, value, step)
        if self._wandb_run is not None:
            self._wandb_run.log(finite, step=step)

    def truncate_after(self, step: int) -> None:
        """Drop every record with a step above `step` (a run resuming from checkpoint `step` calls this)."""
        with self._lock:
            if self._file.closed:
                raise ValueError(f"{self.path}: logger is closed")
            self._file.flush()
            records, _ = _parse(self.path, self.path.read_bytes())
            kept = [record for record in records if record["step"] <= step]
            if len(kept) < len(records):
                self._file.close()
                try:
                    _write_lines_atomically(self.path, [json.dumps(record) + "\n" for record in kept])
                finally:
                    self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (held open for the run)
            self.last_step = kept[-1]["step"] if kept else None

    def close(self) -> None:
        with self._lock:
            if self._file.closed:
                return
            self._file.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._wandb_run is not None:
            self._wandb_run.finish()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _to_json_number(self, key: str, value: Any, step: int) -> float | int | None:
        if not isinstance(key, str) or key in RESERVED_KEYS:
            raise ValueError(
                f"metric name {key!r} is not allowed (names are strings other than {RESERVED_KEYS})"
            )
        number = to_number(value, key)
        if isinstance(number, float) and not math.isfinite(number):
            if not self._warned_non_finite:
                self._warned_non_finite = True
                warnings.warn(
                    f"metric {key!r} is {number} at step {step}; non-finite values are written as null "
                    f"in {self.path} (this warning is shown once per run)",
                    RuntimeWarning,
                    stacklevel=3,
                )
            return None
        return number

    def _repair_and_last_step(self) -> int | None:
        """Cut a torn last line left by a crash (so appends start on a fresh line); return the last step."""
        if not self.path.exists():
            return None
        data = self.path.read_bytes()
        records, complete_bytes = _parse(self.path, data)
        if complete_bytes != len(data):
            with open(self.path, "r+b") as f:
                if complete_bytes < len(data):
                    f.truncate(complete_bytes)
                else:  # the last record is whole but lost its newline
                    f.seek(0, os.SEEK_END)
                    f.write(b"\n")
                f.flush()
                os.fsync(f.fileno())
        return records[-1]["step"] if records else None


def to_number(value: Any, name: str = "value") -> float | int:
    """A Python int or float from an int, float, bool, numpy scalar or one-element `mx.array`/`np.ndarray`."""
    if isinstance(value, mx.array):
        if value.size != 1:
            raise TypeError(f"metric {name!r} is an mx.array of shape {tuple(value.shape)}; log a scalar")
        value = value.item()
    elif isinstance(value, (np.ndarray, np.generic)):
        if value.size != 1:
            raise TypeError(f"metric {name!r} is an array of shape {value.shape}; log a scalar")
        value = value.item()
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, Real):
        return float(value)
    raise TypeError(f"metric {name!r} is a {type(value).__name__}; metrics are numbers")


def _parse(path: Path, data: bytes) -> tuple[list[dict], int]:
    """Records in `data`, and how many leading bytes hold complete records with their newlines.

    That count is below `len(data)` when the last line is torn, and `len(data) + 1` when the last record
    is whole but lacks its newline.
    """
    lines = data.split(b"\n")
    # The last element is b"" when the data ends with a newline; otherwise it is an unterminated line.
    records: list[dict] = []
    offset = 0
    for number, raw in enumerate(lines, start=1):
        is_last = number == len(lines)
        if is_last and raw == b"":
            break
        if raw.strip():
            try:
                record = json.loads(raw.decode("utf-8"))
                problem = None if _is_record(record) else 'not a JSON object with an integer "step"'
            except ValueError as error:
                problem = str(error)
            if problem is not None:
                if is_last:
                    # Written without its newline: a crash mid-line. Drop it.
                    return records, offset
                raise MetricsFileError(f"{path}:{number}: corrupt metrics record: {problem}")
            records.append(record)
        offset += len(raw) + 1
    return records, offset


def _is_record(record: Any) -> bool:
    return isinstance(record, dict) and isinstance(record.get("step"), int)


def _write_lines_atomically(path: Path, lines: list[str]) -> None:
    with atomic_writer(path) as f:
        f.writelines(lines)


def _tensorboard_writer_class(requested: bool | None):
    """tensorboardX's SummaryWriter, else torch's; None when off or (unless required) not installed."""
    if requested is False:
        return None
    try:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    except ImportError:
        pass
    try:
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter
    except ImportError:
        pass
    if requested:
        raise ImportError(
            "tensorboard=True but neither tensorboardX nor torch.utils.tensorboard is installed "
            "(pip install tensorboardX)"
        )
    return None


def _import_wandb(project: str):
    try:
        import wandb
    except ImportError:
        raise ImportError(
            f"wandb_project={project!r} was given but wandb is not installed (pip install wandb)"
        ) from None
    return wandb
