"""The Python sandbox tool: run untrusted code in a child process that cannot hurt the actor.

Each call gets a fresh empty temporary working directory, an environment stripped to PATH and a UTF-8
locale, Python in isolated mode (`-I`: no user site, no PYTHON* variables), and these limits, set in the
child before it runs anything:

- RLIMIT_CPU (CPU seconds), RLIMIT_AS (address space), RLIMIT_FSIZE (bytes any one file may grow to: also
  bounds stdout/stderr, which go to files in the temp directory), RLIMIT_NPROC (processes);
- a wall-clock timeout, after which the whole process group (the child and anything it forked) is killed;
- its own network namespace with only a down loopback (no network) when the actor runs as root on Linux.

RLIMIT_NPROC counts every process of the user, and root ignores it, so as root the child also drops to a
user of its own: a uid drawn at random per call from a range no account uses (`SANDBOX_UIDS`), with no
groups. The process limit then binds, the code cannot read root's files, and two calls running at once (or a
fork bomb's orphans still dying) never share one process count: with one shared user such as `nobody`, a
fork bomb in one rollout made every other rollout's sandboxed exec fail with EAGAIN. Not as root, the network
stays reachable (unprivileged processes cannot make a namespace without user namespaces) and the process
limit counts the user's other processes too; `SandboxLimits.isolation()` says what applied.
"""

from __future__ import annotations

import ctypes
import os
import resource
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from lazarus.env.tools.registry import Tool, ToolError, tool

CLONE_NEWNET = 0x40000000
# 2^24 uids above systemd's container range (524288-1879048191) and below 2^31 (uids past it upset some
# tools): no account owns them, so a sandboxed child shares its process count with nothing.
SANDBOX_UIDS = range(0x7A000000, 0x7B000000)


@dataclass(frozen=True)
class SandboxLimits:
    cpu_seconds: int = 5
    memory_bytes: int = 512 << 20
    file_bytes: int = 1 << 20
    processes: int = 16
    wall_seconds: float = 10.0
    output_chars: int = 2000  # of stdout/stderr kept in the result

    @staticmethod
    def isolation() -> dict[str, bool]:
        """Which protections this process can give its children."""
        root = os.geteuid() == 0 and sys.platform.startswith("linux")
        return {"rlimits": True, "no_network": root, "own_user": root}


@dataclass
class SandboxResult:
    returncode: int  # negative: killed by that signal
    stdout: str
    stderr: str
    timed_out: bool

    def text(self) -> str:
        parts = [self.stdout.rstrip()]
        if self.stderr.strip():
            parts.append(f"stderr: {self.stderr.rstrip()}")
        if self.timed_out:
            parts.append("killed: wall-clock timeout")
        elif self.returncode < 0:
            parts.append(f"killed by {signal.Signals(-self.returncode).name}")
        elif self.returncode != 0:
            parts.append(f"exit status {self.returncode}")
        return "\n".join(p for p in parts if p) or "(no output)"


def _limit_child(limits: SandboxLimits, uid: int | None):
    def preexec() -> None:  # runs in the child between fork and exec: no Python objects shared after this
        if uid is not None:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.unshare(CLONE_NEWNET)  # failure leaves the network as is (documented in isolation())
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 1))
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes))
        resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes, limits.processes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)

    return preexec


def _others_can_run(path: str) -> bool:
    """Whether a user with no rights of its own can execute `path` (every directory searchable by others)."""
    real = Path(os.path.realpath(path))
    try:
        return all(p.stat().st_mode & 0o001 for p in [real, *real.parents])
    except OSError:
        return False


def interpreter(isolate: bool) -> str | None:
    """The Python the sandbox runs: this one, or under a user of its own the first one any user may execute."""
    if not isolate:
        return sys.executable
    for candidate in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.exists(candidate) and _others_can_run(candidate):
            return candidate
    return None


def run_python(code: str, limits: SandboxLimits = SandboxLimits()) -> SandboxResult:
    """Run `code` under `limits` in an empty temporary directory; never raises for what the code does."""
    isolate = SandboxLimits.isolation()["own_user"]
    uid = SANDBOX_UIDS[secrets.randbelow(len(SANDBOX_UIDS))] if isolate else None
    python = interpreter(isolate)
    if python is None:
        raise ToolError("python: no Python interpreter that the sandbox user may run "
                        f"({sys.executable} is in a directory other users cannot enter)", "tool_error")
    with tempfile.TemporaryDirectory(prefix="lazarus-sandbox-") as workdir:
        work = Path(workdir)
        if uid is not None:
            os.chown(work, uid, uid)
        (work / "main.py").write_text(code, encoding="utf-8")
        stdout_path, stderr_path = work / ".stdout", work / ".stderr"
        with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
            if uid is not None:
                os.chown(stdout_path, uid, uid)
                os.chown(stderr_path, uid, uid)
            process = subprocess.Popen(
                [python, "-I", "-S", "main.py"], cwd=work, stdin=subprocess.DEVNULL, stdout=out,
                stderr=err, env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir},
                preexec_fn=_limit_child(limits, uid), start_new_session=True, close_fds=True)
            timed_out = False
            try:
                process.wait(timeout=limits.wall_seconds)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                _kill_group(process)
        return SandboxResult(process.returncode, _head(stdout_path, limits.output_chars),
                             _head(stderr_path, limits.output_chars), timed_out)


def _kill_group(process: subprocess.Popen, wait_s: float = 5.0) -> None:
    """Kill the sandbox's whole process group (the child leads it) and wait, bounded, until it is gone: its
    members hold their uid's process slots and the machine's memory until init reaps them. The leader is ours
    to reap first: unreaped, it alone would keep the group alive for the whole `wait_s`."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            break
        process.poll()
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)
    process.wait()


def _head(path: Path, chars: int) -> str:
    with open(path, "rb") as f:
        data = f.read(chars * 4)
    text = data.decode("utf-8", errors="replace")
    return text if len(text) <= chars else text[:chars] + "…"


def python_tool(limits: SandboxLimits = SandboxLimits()) -> Tool:
    """A `python` tool that runs code in the sandbox and returns what it printed."""

    @tool(name="python")
    def python(code: str) -> str:
        """Run Python code in a sandbox (no network, no files kept, a few seconds of CPU) and return what it
        printed to stdout and stderr."""
        result = run_python(code, limits)
        if result.timed_out or result.returncode != 0:
            raise ToolError(f"python: {result.text()}", "tool_error")
        return result.text()

    return python
