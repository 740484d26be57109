"""What every trainer shares: run directory, optimizer + stepper, metrics, progress, checkpoints, resume.

The step loops themselves live in sft.py / dpo.py / rl.py, short and visible; this file only holds
the plumbing around them.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

from lazarus.config import Config, to_dict, to_yaml
from lazarus.data.io import atomic_writer
from lazarus.observe.memory import peak_memory_gb
from lazarus.observe.metrics import MetricsLogger
from lazarus.observe.progress import Progress
from lazarus.training.checkpoint import load_checkpoint, model_fingerprint, resume_changes, save_checkpoint
from lazarus.training.optim import build_optimizer
from lazarus.training.rundir import lock_run_dir, remove_stale_temp
from lazarus.training.step import Stepper


def pad_length(n: int, multiple: int = 16) -> int:
    """Round sequence lengths up so compiled steps see few distinct shapes."""
    return ((n + multiple - 1) // multiple) * multiple


class Trainer:
    """Base of the SFT, DPO and RL trainers (state that lives for the run)."""

    name = "train"

    def __init__(self, cfg: Config, model: nn.Module, tokenizer, optimizer_steps: int | None = None):
        self.cfg = cfg
        self.model = model
        self.tokenizer = tokenizer
        self.run_dir = Path(cfg.training.run_dir)  # created (and locked) by `open`, when the run starts
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.optimizer = build_optimizer(cfg.optim, optimizer_steps or cfg.training.max_steps)
        self.step = 0
        self.logger: MetricsLogger | None = None
        self.progress: Progress | None = None
        self.extra_modules: dict[str, nn.Module] = {}
        self.optimizer_target: nn.Module | None = None  # the module the optimizer steps, when not `model`
        self._t_start = time.perf_counter()

    def make_stepper(self, loss_fn, model: nn.Module | None = None, optimizer=None) -> Stepper:
        return Stepper(model or self.model, optimizer or self.optimizer, loss_fn,
                       max_grad_norm=self.cfg.optim.max_grad_norm, compile=self.cfg.training.compile,
                       on_nonfinite=self.cfg.training.on_nonfinite)

    # --- run lifecycle -------------------------------------------------------------------------
    def open(self, resume: str | Path | None = None) -> dict:
        """Lock the run dir; restore from `resume` (checkpoint or run dir) if given; open metrics and progress.

        `config.yaml` is written only once the resume (if any) has succeeded: a refused run leaves the
        directory as it was. A second run in the same directory is refused while this one holds the lock.
        """
        self._run_lock = lock_run_dir(self.run_dir)
        try:
            remove_stale_temp(self.run_dir)
            state = {}
            if resume is not None:
                state = load_checkpoint(resume, self.model, self.optimizer, self.extra_modules,
                                        optimizer_target=self.optimizer_target,
                                        fingerprint=model_fingerprint(self.model, self.cfg.algorithm,
                                                                      self.extra_modules))
                self.step = int(state["step"])
                for note in resume_changes(state.get("config"), to_dict(self.cfg)):
                    warnings.warn(f"resume: {note}", stacklevel=2)
            with atomic_writer(self.run_dir / "config.yaml") as f:
                f.write(to_yaml(self.cfg))
            self.logger = MetricsLogger(self.run_dir)
            if resume is not None:
                self.logger.truncate_after(self.step)
            self.progress = Progress(self.cfg.training.max_steps, description=self.name,
                                     enabled=self.cfg.training.progress, start_step=self.step)
        except BaseException:
            self.close()
            raise
        return state

    def close(self) -> None:
        if self.progress:
            self.progress.close()
        if self.logger:
            self.logger.close()
        lock = getattr(self, "_run_lock", None)
        if lock is not None:
            self._run_lock = None
            lock.release()

    def log(self, metrics: dict) -> None:
        metrics = {**metrics, "peak_memory_gb": peak_memory_gb(),
                   "elapsed_s": time.perf_counter() - self._t_start}
        if self.step % self.cfg.training.log_every == 0 or self.step == self.cfg.training.max_steps:
            self.logger.log(self.step, metrics)
        self.progress.update(self.step, metrics)

    def evaluate(self) -> dict:
        return {}

    def finish(self, state: dict) -> dict:
        """After the last step: final checkpoint, then the final evaluation (logged); returns the evaluation.

        The checkpoint comes first so that an evaluation that fails cannot lose the trained weights.
        """
        self.checkpoint(state, force=True)
        final = self.evaluate()
        if final:
            self.logger.log(self.step, final)
        return final

    def checkpoint(self, state: dict, force: bool = False) -> Path | None:
        every = self.cfg.training.save_every
        if force or (every and self.step % every == 0):
            return save_checkpoint(self.run_dir, self.step, self.model, self.optimizer,
                                   {**state, "algorithm": self.cfg.algorithm, "config": to_dict(self.cfg),
                                    "fingerprint": model_fingerprint(self.model, self.cfg.algorithm,
                                                                     self.extra_modules)},
                                   self.extra_modules)
        return None

    def seed_step(self) -> None:
        """Every step's randomness (sampling, dropout) depends only on (seed, step): resumes replay exactly."""
        mx.random.seed(self.cfg.training.seed * 1_000_003 + self.step)
