"""A command running in the background for a test, its output collected line by line as it comes."""

from __future__ import annotations

import re
import subprocess
import threading
import time


class BackgroundRun:
    def __init__(self, command: list[str], env: dict[str, str], finish_timeout: float = 600):
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.finish_timeout = finish_timeout
        self.lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)
        self._reader.start()

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        """The first output line matching `pattern`; fails after `timeout` s or once the command has ended."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if m := re.search(pattern, line):
                    return m
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.05)
        raise AssertionError(f"no line matching {pattern!r}:\n{self.output[-3000:]}")

    def finish(self, timeout: float | None = None) -> int:
        """Its exit code, once it ends (killed after `timeout`, by default the one it was started with)."""
        try:
            self.proc.wait(timeout=self.finish_timeout if timeout is None else timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=10)
        return self.proc.returncode

    @property
    def output(self) -> str:
        return "".join(self.lines)
