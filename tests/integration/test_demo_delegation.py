"""`lazarus demo delegation` runs end to end through the real CLI: the projectile expert is trained and
registered, the tiny model is SFT-ed on delegating and direct demonstrations, multi-turn GRPO runs with the
expert as a tool, and held-out accuracy and the delegation rate both go up.

After SFT (35% of demonstrations delegate) the greedy model answers directly and lands within a metre on
about 60% of problems; GRPO, rewarded for hits alone, learns to hand the aiming to the expert (~97%). The
shipped config demands +20 points (`demo.min_improvement`).

There is no reduced form yet: the model needs its 700 SFT steps to copy numbers into the call and out of
the expert's answer (400 were too few: GRPO then had no working delegation to reinforce), which alone
exceeds CI's 600 s per test on 2 cores. Like the tools demo's test it is skipped under LAZARUS_REDUCED=1 and
runs in full with LAZARUS_REDUCED=0 (allowed an hour).
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REDUCED

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo_delegation.yaml"


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.skipif(REDUCED, reason="no reduced form fits CI's 600 s per test yet (700 SFT steps are needed); "
                    "runs in full with LAZARUS_REDUCED=0")
def test_delegation_demo_grpo_raises_held_out_accuracy_and_the_delegation_rate(tmp_path):
    # given the delegation demo config as shipped, and an empty expert registry
    overrides = ["training.progress=false"]
    args = [str(Path(sys.executable).parent / "lazarus"), "demo", "delegation", "--config", str(CONFIG)]
    for o in overrides:
        args += ["--set", o]
    env = {**os.environ, "LAZARUS_EXPERTS_DIR": str(tmp_path / "experts")}
    # when the demo runs end to end through the real CLI, from an empty directory
    proc = subprocess.run(args, capture_output=True, text=True, timeout=3500, cwd=tmp_path, env=env)
    # then it exits 0 (1 below demo.min_improvement), having trained and registered the expert it delegates to
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (tmp_path / "experts" / "projectile" / "v1" / "weights.safetensors").is_file()
    assert "registered as" in proc.stdout
    # and it reports both accuracies and delegation rates, both up
    before, after, points = map(float, re.search(
        r"held-out accuracy: after SFT ([\d.]+) -> after GRPO ([\d.]+) \(([-+\d.]+) points\)", proc.stdout).groups())
    rate_before, rate_after = map(float, re.search(r"delegation rate: ([\d.]+) -> ([\d.]+)", proc.stdout).groups())
    assert after - before >= 0.20, proc.stdout[-3000:]
    assert rate_after > rate_before
    assert points == pytest.approx(100 * (after - before), abs=0.06)
    assert (tmp_path / "runs" / "demo_delegation" / "grpo" / "metrics.jsonl").exists()
