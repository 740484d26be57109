"""bench/multiturn.py runs end to end (`--quick`, micro model) and prints its throughput lines."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.mark.slow
def test_multiturn_bench_prints_reprefill_throughput_and_cache_ratio_when_the_engine_has_caches():
    # given the multi-turn bench in quick mode, when it runs as its own process
    result = subprocess.run([sys.executable, str(BENCH / "multiturn.py"), "--quick"], capture_output=True, text=True,
                            timeout=300, cwd=BENCH.parent)
    # then it reports re-prefill tokens/s, and either the cache ratio or why it was not measured
    assert result.returncode == 0, result.stderr[-4000:]
    rate = re.search(r"re-prefill every turn\s+([0-9.]+) model tokens/s", result.stdout)
    assert rate and float(rate.group(1)) > 0, result.stdout
    assert re.search(r"ratio [0-9.]+\s+\(KV-cache reuse", result.stdout) or "not measured" in result.stdout
