"""Guards of a run directory: one run at a time, no silent mixing with a previous run, no debris.

- `lock_run_dir(run_dir)`: an exclusive `flock` on `run_dir/.lock`, which also records the holder (pid,
  host, command, start time). A second run in the same directory is refused naming that process. The
  lock is re-entrant within a process (the launcher and the trainer may both take it) and is released
  by the kernel when the process dies, even by `kill -9`, so a stale lock never blocks a new run.
- `prepare_run_dir(cfg, resume, force)`: what a launcher calls before building anything. Takes the lock,
  removes what killed runs left behind (temp and half-pruned directories), refuses a fresh run into a
  directory that holds a previous one unless `--resume` continues it or `--force` starts over, and checks
  the checkpoint to resume from. Nothing in the directory is written or removed before these checks pass.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import sys
import threading
import time
from pathlib import Path

from lazarus.errors import LazarusError
from lazarus.training.checkpoint import PRUNED_SUFFIX, resolve_checkpoint

LOCK_FILE = ".lock"
#: What a run writes into its directory; `--force` removes these (and only these) before starting over.
RUN_OUTPUTS = ("checkpoints", "metrics.jsonl", "config.yaml", "tensorboard", "model", "adapter", "plots",
               "reward_model")


class RunDirError(LazarusError, ValueError):
    """A run directory that cannot be used now; names the directory and, when locked, the holding process."""


class RunDirLock:
    """An exclusive lock on a run directory, held by this process (re-entrant: counted)."""

    _held: dict[Path, RunDirLock] = {}
    _guard = threading.Lock()

    def __init__(self, run_dir: Path, fd: int):
        self.run_dir, self._fd, self._count = run_dir, fd, 1

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Drop one hold; the lock is freed when the last one goes."""
        with RunDirLock._guard:
            if self._fd is None:
                return
            self._count -= 1
            if self._count > 0:
                return
            RunDirLock._held.pop(self.run_dir, None)
            fd, self._fd = self._fd, None
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def __enter__(self) -> RunDirLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def lock_run_dir(run_dir: str | Path) -> RunDirLock:
    """Lock `run_dir` for this process (created if missing); `RunDirError` names the process holding it."""
    run_dir = Path(run_dir).resolve()
    with RunDirLock._guard:
        lock = RunDirLock._held.get(run_dir)
        if lock is not None:
            lock._count += 1
            return lock
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe_holder(fd)
            os.close(fd)
            raise RunDirError(f"{run_dir}: in use by another run ({holder}); wait for it to finish or choose "
                              f"another training.run_dir") from None
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                  "command": " ".join(sys.argv)[:500]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        lock = RunDirLock(run_dir, fd)
        RunDirLock._held[run_dir] = lock
        return lock


def _describe_holder(fd: int) -> str:
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return (f"pid {holder['pid']} on {holder['host']}, started {holder['started']}: "
                f"{holder.get('command', '?')}")
    except (ValueError, KeyError, TypeError, OSError):
        return "a process that has not yet recorded itself"


def remove_stale_temp(run_dir: str | Path) -> list[Path]:
    """Remove temp files and directories that killed saves and prunes left (call with the lock held)."""
    removed = []
    for folder in (Path(run_dir), Path(run_dir) / "checkpoints"):
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            name = entry.name
            # atomic_dir / atomic_writer temp names, atomic_dir's moved-aside originals, pruned checkpoints
            stale = name.startswith(".") and (name.endswith((".tmp", ".tmp.safetensors", PRUNED_SUFFIX))
                                              or ".old." in name)
            if not stale:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def previous_run(run_dir: str | Path) -> list[str]:
    """What a previous run left in `run_dir` (names of run outputs present), empty for a fresh directory."""
    run_dir = Path(run_dir)
    return [name for name in RUN_OUTPUTS if (run_dir / name).exists()]


def prepare_run_dir(cfg, resume: str | Path | None = None, force: bool = False) -> RunDirLock:
    """Lock `cfg.training.run_dir` and make it ready for a run; returns the lock (release it when done).

    - a directory holding a previous run needs `resume` (a checkpoint of this directory, or the directory
      itself) to continue it, or `force` to start over, which removes the previous run's outputs (and only
      them: `RUN_OUTPUTS`);
    - resuming from another directory into one that holds a previous run also needs `force`;
    - `resume` must name a complete checkpoint: `CheckpointError` otherwise, before anything is written.
    """
    run_dir = Path(cfg.training.run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"training.run_dir: {run_dir} is a file, not a directory")
    lock = lock_run_dir(run_dir)
    try:
        remove_stale_temp(run_dir)
        checkpoint = resolve_checkpoint(resume) if resume is not None else None
        previous = previous_run(run_dir)
        continues_here = checkpoint is not None and run_dir.resolve() in checkpoint.resolve().parents
        if previous and not continues_here and not force:
            hint = (f"pass --resume {run_dir} to continue it, or --force to start over (removes its "
                    f"{', '.join(previous)})")
            if checkpoint is not None:
                hint = (f"resuming from {checkpoint}, outside it, would mix two runs; choose another "
                        f"training.run_dir, or pass --force to replace the previous run")
            raise RunDirError(f"{run_dir}: holds a previous run ({', '.join(previous)}); {hint}")
        if force and not continues_here:
            for name in previous:
                target = run_dir / name
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                else:
                    target.unlink()
    except BaseException:
        lock.release()
        raise
    return lock
