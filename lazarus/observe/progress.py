"""Live progress of a training run: a rich bar on a terminal, a compact line every few steps elsewhere.

Both show step/total, loss, reward, KL, tokens/s and the ETA (and, for RL runs, the batch's staleness and
the learner's wait for it). They read these metric names, the first present of each:

    loss       loss
    reward     reward_mean, reward
    kl         kl
    stale      staleness_max
    wait       wait_for_batch_s
    tokens/s   tokens_per_s
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn
from rich.progress import Progress as RichProgress

from lazarus.observe.metrics import to_number

if TYPE_CHECKING:
    from typing_extensions import Self

SHOWN = (
    # (label, metric names in order of preference, format)
    ("loss", ("loss",), "{:.4f}"),
    ("reward", ("reward_mean", "reward"), "{:.3f}"),
    ("kl", ("kl",), "{:.4f}"),
    ("stale", ("staleness_max",), "{:.0f}"),  # the distributed runtime: version lag and the learner's wait
    ("wait", ("wait_for_batch_s",), "{:.2f}s"),
)
TOKENS_PER_S = "tokens_per_s"


def format_metrics(metrics: dict[str, Any]) -> str:
    """`loss 1.2345 | reward 0.500 | kl 0.0012 | 1,234 tok/s` from whichever of those metrics are present."""
    parts = []
    for label, names, fmt in SHOWN:
        name = next((name for name in names if metrics.get(name) is not None), None)
        if name is not None:
            parts.append(f"{label} {fmt.format(to_number(metrics[name], name))}")
    if metrics.get(TOKENS_PER_S) is not None:
        parts.append(f"{to_number(metrics[TOKENS_PER_S], TOKENS_PER_S):,.0f} tok/s")
    return " | ".join(parts)


def format_eta(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


class Progress:
    """Progress of `total_steps` training steps.

    enabled: draw a live rich bar when the console is a terminal. With enabled=False, or when output is
        not a terminal (CI, a pipe, a log file), print one compact line instead at the first step, every
        `print_every` steps (default: about 20 lines per run) and at the last step.
    start_step: the step a resumed run starts after, so the ETA counts only the steps this run makes.
    """

    def __init__(
        self,
        total_steps: int,
        *,
        description: str,
        enabled: bool = True,
        start_step: int = 0,
        print_every: int | None = None,
        console: Console | None = None,
    ):
        if total_steps < 1:
            raise ValueError(f"total_steps must be at least 1, got {total_steps}")
        self.total_steps = total_steps
        self.description = description
        self.start_step = start_step
        self.print_every = print_every or max(1, total_steps // 20)
        self.console = console or Console()
        self.live = enabled and self.console.is_terminal
        self._started_at = time.monotonic()
        self._last_line: str | None = None
        self._last_printed_step: int | None = None
        self._last_step: int | None = None
        self._bar: RichProgress | None = None
        if self.live:
            self._bar = RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}", markup=False),
                console=self.console,
            )
            self._task = self._bar.add_task(description, total=total_steps, completed=start_step, stats="")
            self._bar.start()

    def update(self, step: int, metrics: dict[str, Any]) -> None:
        """Show that `step` (1-based, counted over the whole run) has finished with these metrics."""
        stats = " | ".join(
            part for part in (format_metrics(metrics), f"ETA {format_eta(self.eta_seconds(step))}") if part
        )
        self._last_step = step
        if self._bar is not None:
            self._bar.update(self._task, completed=step, stats=stats)
            return
        self._last_line = f"{self.description} step {step}/{self.total_steps} | {stats}"
        if step == self.start_step + 1 or step % self.print_every == 0 or step >= self.total_steps:
            self._print_last_line()

    def eta_seconds(self, step: int) -> float | None:
        """Seconds left at the average pace of the steps this run has made so far."""
        steps_done = step - self.start_step
        if steps_done <= 0:
            return None
        seconds_per_step = (time.monotonic() - self._started_at) / steps_done
        return max(0, self.total_steps - step) * seconds_per_step

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        elif self._last_line is not None and self._last_printed_step != self._last_step:
            self._print_last_line()  # a run that stopped early still shows where it stopped

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _print_last_line(self) -> None:
        self.console.print(self._last_line, markup=False, highlight=False, soft_wrap=True)
        self._last_printed_step = self._last_step
