"""The Python sandbox stops what untrusted code does within its limits, and the parent survives."""

import os
import threading
import time

import pytest

from lazarus.env.tools.registry import ToolError
from lazarus.env.tools.sandbox import SandboxLimits, python_tool, run_python

# One xdist group with test_mcp.py's python call: the fork-bomb test counts every `main.py` process left on
# the machine, and another worker's sandboxed child would be one.
pytestmark = pytest.mark.xdist_group("sandbox")

FORK_BOMB = ("import os, time\nfor _ in range(200):\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
             "time.sleep(60)")
LIMITS = SandboxLimits(cpu_seconds=2, memory_bytes=256 << 20, file_bytes=1 << 20, processes=16, wall_seconds=6)


def test_sandbox_runs_code_in_an_empty_directory_with_a_stripped_environment():
    result = run_python("import os\nprint(sorted(os.listdir('.')), sorted(os.environ))", LIMITS)
    assert result.returncode == 0 and not result.timed_out
    files, variables = result.stdout.strip().split("] [")
    assert files == "['.stderr', '.stdout', 'main.py'"
    assert "PYTHONPATH" not in variables and "LAZARUS" not in variables


def test_sandbox_stops_an_infinite_loop():
    result = run_python("while True:\n    pass", LIMITS)
    assert result.returncode != 0  # SIGXCPU at the CPU limit (or SIGKILL at the wall clock)


def test_sandbox_stops_a_memory_bomb():
    result = run_python("x = []\nwhile True:\n    x.append(bytearray(50 << 20))", LIMITS)
    assert result.returncode != 0 and "MemoryError" in result.stderr


def test_sandbox_stops_a_fork_bomb_and_leaves_no_process_behind():
    result = run_python(FORK_BOMB, LIMITS)
    assert result.timed_out  # the wall clock ended it: the whole process group is killed
    leftover = os.popen("ps -eo args | grep -c '[m]ain.py'").read().strip()
    assert leftover == "0"


@pytest.mark.skipif(not SandboxLimits.isolation()["own_user"], reason="a user of its own per call needs root")
def test_a_fork_bomb_in_one_call_does_not_starve_calls_running_beside_it():
    # given a fork bomb holding its whole process limit in one sandbox call
    results = {}
    thread = threading.Thread(target=lambda: results.update(bomb=run_python(FORK_BOMB, LIMITS)))
    thread.start()
    time.sleep(1.0)  # the bomb has forked up to its limit by now
    # when other calls run at once while it lives, as the rollouts of one group do
    beside = []
    callers = [threading.Thread(target=lambda i=i: beside.append(run_python(f"import time\ntime.sleep(1)\n"
                                                                                f"print({i} * 7)", LIMITS)))
               for i in range(4)]
    for caller in callers:
        caller.start()
    for caller in [*callers, thread]:
        caller.join()
    # then each of them ran (one shared sandbox user made their exec fail with EAGAIN) and the bomb timed out
    assert sorted(r.stdout.strip() for r in beside) == ["0", "14", "21", "7"]
    assert results["bomb"].timed_out


def test_sandbox_stops_a_huge_file_write():
    result = run_python("with open('big', 'wb') as f:\n    while True:\n        f.write(b'x' * (1 << 20))", LIMITS)
    assert result.returncode != 0  # SIGXFSZ at file_bytes


def test_sandbox_bounds_what_it_reads_back():
    result = run_python("print('y' * 100000)", LIMITS)
    assert len(result.stdout) <= LIMITS.output_chars + 1


@pytest.mark.skipif(not SandboxLimits.isolation()["no_network"], reason="no network namespace without root")
def test_sandbox_has_no_network():
    code = "import socket\ns = socket.socket()\ns.settimeout(2)\ns.connect(('127.0.0.1', 22))"
    result = run_python(code, LIMITS)
    assert result.returncode != 0 and "OSError" in result.stderr or "Error" in result.stderr


def test_python_tool_returns_output_and_reports_failures_as_tool_errors():
    tool = python_tool(LIMITS)
    assert tool.function(code="print(6 * 7)") == "42"
    with pytest.raises(ToolError):
        tool.function(code="raise SystemExit(3)")
