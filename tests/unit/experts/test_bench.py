"""bench/experts.py runs end to end (`--quick`: three updates per row, no torch) and prints its rows, the env
workers' row included."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.slow
def test_experts_bench_prints_env_steps_per_second_for_every_row():
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "experts.py"), "--quick"], capture_output=True,
                            text=True, timeout=600, cwd=ROOT, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = re.findall(r"^(mlp|gru) .*?\s(\d+)\s+not run\s+-\s+\d+\s+-\s+-$", result.stdout, re.MULTILINE)
    assert len(rows) == 3 and all(int(rate) > 0 for _, rate in rows), result.stdout
    workers = re.search(r"^env workers: .*: 1 process (\d+) env steps/s, 2 worker processes (\d+) env steps/s, "
                        r"ratio ([\d.]+)$", result.stdout, re.MULTILINE)
    assert workers and int(workers.group(1)) > 0 and int(workers.group(2)) > 0, result.stdout
