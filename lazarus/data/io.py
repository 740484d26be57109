"""Atomic dataset files: written under a temp name next to the target, then renamed over it.

(`lazarus.models.io` does the same for checkpoints; `data` sits below `models` in the layering, so it
keeps its own two helpers.)

One permission rule for every output: what `open()` would give, 0666 (files) or 0777 (directories) less
the process umask. (Temp names come from `mkstemp`/`mkdtemp`, which use 0600/0700; they are widened to
that rule before the rename, so a JSON file and a safetensors file next to it read the same.)

A write that fails for lack of space or permission raises `WriteError` naming the path and the cause
(ENOSPC, EACCES, ...), and leaves the previous file in place.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from lazarus.errors import LazarusError


class WriteError(LazarusError, OSError):
    """An output that could not be written; names the path and the cause (e.g. ENOSPC: disk full)."""


_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where the platform allows (Linux /proc)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _umask_lock:  # elsewhere: set and restore (the only portable way to read it)
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def file_mode() -> int:
    return 0o666 & ~current_umask()


def dir_mode() -> int:
    return 0o777 & ~current_umask()


def _disk_nearly_full(folder: Path) -> bool:
    try:
        stats = os.statvfs(folder)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < 1 << 20


def _disk_nearly_full(folder: Path) -> bool:
    try:
        stats = os.statvfs(folder)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < 1 << 20


def write_error(path: str | Path, error: BaseException) -> WriteError:
    """A `WriteError` for `path` saying why (the errno name, e.g. ENOSPC, when there is one)."""
    code = getattr(error, "errno", None)
    if code is None and ("No space left" in str(error) or _disk_nearly_full(Path(path).parent)):
        code = errno.ENOSPC  # MLX's write errors carry no errno: tell a full disk by its free space
    cause = f"{os.strerror(code)} ({errno.errorcode.get(code, code)})" if code else str(error)
    return WriteError(code or 0, f"{path}: cannot write: {cause}")


@contextlib.contextmanager
def atomic_writer(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Yield a file opened on a temp name; on success it is synced and renamed to `path`.

    On any error the temp file is removed and an existing `path` is left untouched.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise write_error(path, e) from None
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and not isinstance(e, WriteError):
            raise write_error(path, e) from None
        raise


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    """Write one JSON object per line to `path`, atomically."""
    with atomic_writer(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
