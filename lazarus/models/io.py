"""Checkpoint I/O: weights, adapters and JSON metadata, always written to a temp name then renamed.

A crash while writing leaves the previous good file or directory in place.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import mlx.core as mx

from lazarus.data.io import atomic_writer, dir_mode, file_mode, write_error


def write_json(path: str | Path, obj) -> None:
    """Write `obj` as JSON to `path` atomically."""
    text = json.dumps(obj, indent=2) + "\n"  # serialize first: a bad object never touches the file
    with atomic_writer(path) as f:
        f.write(text)


def save_safetensors(path: str | Path, weights: dict[str, mx.array], metadata: dict[str, str] | None = None):
    """Save `weights` to `path` as safetensors, atomically."""
    path = Path(path)
    # mx.save_safetensors appends ".safetensors" when missing; keep the suffix on the temp name.
    tmp = path.parent / f".{path.stem}.{os.getpid()}.tmp.safetensors"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        mx.save_safetensors(str(tmp), weights, metadata=metadata or {})
        os.chmod(tmp, file_mode())  # MLX creates 0644 whatever the umask
        os.replace(tmp, path)
    except BaseException as e:
        # MLX reports a failed write as RuntimeError; judge the cause before the partial file is removed
        error = write_error(path, e) if isinstance(e, (OSError, RuntimeError)) else None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if error is not None:
            raise error from None
        raise


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temp directory next to `path`; on success it replaces `path` as a whole.

    An existing `path` is moved aside first and removed only after the new one is in place.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
        os.chmod(tmp, dir_mode())  # mkdtemp makes 0700; outputs follow the umask like every other file
    except OSError as e:
        raise write_error(path, e) from None
    old = None
    try:
        yield tmp
        if path.exists():
            old = path.parent / f".{path.name}.old.{os.getpid()}"
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException:
        if old is not None and old.exists() and not path.exists():  # stopped between the two renames
            os.replace(old, path)
        remove_tree(tmp)
        raise
    if old is not None:
        remove_tree(old)


def remove_tree(path: Path, attempts: int = 3) -> None:
    """`rmtree` that finishes even when Ctrl-C or SIGTERM (raised as KeyboardInterrupt) lands mid-delete,
    then lets the interrupt go on: a stopped run leaves no temp, `.old` or `.pruned` directory behind."""
    interrupted = None
    for _ in range(attempts):
        try:
            shutil.rmtree(path, ignore_errors=True)
            break
        except KeyboardInterrupt as exc:
            interrupted = exc
    if interrupted is not None:
        raise interrupted


def read_json(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())
