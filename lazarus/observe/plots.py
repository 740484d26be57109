"""PNG curves of a run's `metrics.jsonl`: one figure per metric group, plus an overview grid of them all.

Metrics are grouped by name (`reward_mean` and `reward_correctness_std` both go to reward.png); names
that fit no group go to other.png. Curves are against the training step. Rendering uses matplotlib's
Agg canvas directly (no pyplot, no display), and each PNG is written to a temp name and renamed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lazarus.data.io import atomic_writer
from lazarus.observe.metrics import RESERVED_KEYS, MetricsFileError, read_metrics

PLOTS_DIR = "plots"
SMOOTH_FROM = 30  # with at least this many points, draw the raw curve faint and a moving average over it


def _words(name: str) -> list[str]:
    return [word for word in re.split(r"[^a-z0-9]+", name.lower()) if word]


# (file stem, title, does this metric belong here); a metric goes to the first group that takes it.
GROUPS: list[tuple[str, str, Callable[[str], bool]]] = [
    ("loss", "loss", lambda name: "loss" in _words(name)),
    ("reward", "reward", lambda name: _words(name)[0] in ("reward", "rewards")),
    ("accuracy", "accuracy", lambda name: "accuracy" in _words(name) or _words(name)[0] == "acc"),
    ("kl", "KL", lambda name: "kl" in _words(name)),
    ("entropy", "entropy", lambda name: "entropy" in _words(name)),
    ("clip", "clip fraction", lambda name: _words(name)[0].startswith("clip")),
    ("advantage", "advantage", lambda name: _words(name)[0] in ("advantage", "advantages", "adv")),
    ("completion_length", "completion length", lambda name: bool({"length", "len"} & set(_words(name)))),
    (
        "tokens_per_s",
        "tokens/s",
        lambda name: re.search(r"tok(en)?s?_?(per_?s|/s)", name.lower()) is not None,
    ),
    ("elapsed", "wall time (s)", lambda name: _words(name)[0] == "elapsed"),
    # the distributed runtime: version lag of each batch, weight sync, and the work queue's counts
    ("staleness", "staleness (versions behind)", lambda name: "staleness" in _words(name)),
    ("weight_sync", "weight sync (ms, bytes)", lambda name: name.lower().startswith("weight_sync")),
    ("runtime", "runtime counts", lambda name: _words(name)[0] in (
        "dropped", "requeued", "queue", "tasks", "duplicate", "trajectories", "actors")),
    # step_s, generation_s, update_s: seconds per step and per phase
    ("step_time", "step time (s)", lambda name: "time" in _words(name) or _words(name)[-1] == "s"),
    ("memory", "memory (GB)", lambda name: bool({"memory", "mem", "rss"} & set(_words(name)))),
    ("learning_rate", "learning rate", lambda name: name.lower() in ("lr", "learning_rate")),
    ("grad_norm", "gradient norm", lambda name: "grad" in _words(name)),
]
OTHER = ("other", "other")


def plot_run(
    run_dir: str | Path, out_dir: str | Path | None = None, keys: list[str] | None = None
) -> list[Path]:
    """Write the PNG curves of `run_dir/metrics.jsonl` to `out_dir` (default `run_dir/plots`).

    keys: plot only these metrics (default: every numeric metric). Returns the files written, the
    per-group figures first and `overview.png` last.
    """
    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    if not records:
        raise MetricsFileError(f"{run_dir / 'metrics.jsonl'}: holds no records yet")
    series = metric_series(records)
    if keys is not None:
        unknown = [key for key in keys if key not in series]
        if unknown:
            raise KeyError(
                f"no metric named {', '.join(map(repr, unknown))} in {run_dir}; it has: {', '.join(series)}"
            )
        series = {key: series[key] for key in keys}
    if not series:
        raise MetricsFileError(f"{run_dir / 'metrics.jsonl'}: no numeric metrics to plot")

    out_dir = Path(out_dir) if out_dir is not None else run_dir / PLOTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    groups = group_metrics(list(series))
    written = []
    for stem, title, names in groups:
        figure = Figure(figsize=(7, 4.2), layout="constrained")
        _draw(figure.add_subplot(), title, {name: series[name] for name in names})
        written.append(_save(figure, out_dir / f"{stem}.png"))

    columns = min(3, len(groups))
    rows = math.ceil(len(groups) / columns)
    overview = Figure(figsize=(5 * columns, 3.4 * rows), layout="constrained")
    overview.suptitle(run_dir.resolve().name)
    for index, (_, title, names) in enumerate(groups, start=1):
        _draw(overview.add_subplot(rows, columns, index), title, {name: series[name] for name in names})
    written.append(_save(overview, out_dir / "overview.png"))
    return written


def metric_series(records: list[dict]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """For every metric with at least one numeric value: (steps, values), null values as NaN."""
    points: dict[str, list[tuple[int, float]]] = {}
    for record in records:
        for name, value in record.items():
            if name in RESERVED_KEYS or isinstance(value, bool):
                continue
            if value is None:
                points.setdefault(name, []).append((record["step"], math.nan))
            elif isinstance(value, (int, float)):
                points.setdefault(name, []).append((record["step"], float(value)))
    series = {}
    for name, pairs in points.items():
        steps, values = np.array(pairs, dtype=np.float64).T
        if np.isfinite(values).any():
            series[name] = (steps, values)
    return series


def group_metrics(names: list[str]) -> list[tuple[str, str, list[str]]]:
    """(file stem, title, metric names) for each non-empty group, in `GROUPS` order, `other` last."""
    members: dict[str, list[str]] = {}
    for name in names:
        stem = next((stem for stem, _, belongs in GROUPS if belongs(name)), OTHER[0])
        members.setdefault(stem, []).append(name)
    return [(stem, title, members[stem]) for stem, title, _ in [*GROUPS, (*OTHER, None)] if stem in members]


def _draw(axes, title: str, series: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    for index, (name, (steps, values)) in enumerate(series.items()):
        color = f"C{index % 10}"
        if len(steps) >= SMOOTH_FROM:
            axes.plot(steps, values, color=color, alpha=0.3, linewidth=1)
            axes.plot(
                steps, _moving_average(values, window=max(3, len(values) // 20)), color=color, label=name
            )
        else:
            axes.plot(steps, values, color=color, marker="o", markersize=3, label=name)
    axes.set_title(title)
    axes.set_xlabel("step")
    axes.ticklabel_format(axis="y", useOffset=False)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")


def _moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Centred mean over `window` neighbours (odd), skipping NaNs; shorter windows at the ends; NaN stays NaN."""
    largest_odd = len(values) if len(values) % 2 else len(values) - 1
    window = max(1, min(window | 1, largest_odd))
    finite = np.isfinite(values)
    kernel = np.ones(window)
    sums = np.convolve(np.where(finite, values, 0.0), kernel, mode="same")
    counts = np.convolve(finite.astype(np.float64), kernel, mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(finite, sums / counts, np.nan)


def _save(figure: Figure, path: Path) -> Path:
    FigureCanvasAgg(figure)
    with atomic_writer(path, "wb") as f:
        figure.savefig(f, format="png", dpi=110)
    return path
