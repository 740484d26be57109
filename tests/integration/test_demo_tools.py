"""`lazarus demo tools` runs end to end through the real CLI: data, SFT, multi-turn eval, multi-turn GRPO with
the calculator, eval, and GRPO raises held-out accuracy and the share of episodes that call the tool.

After SFT (30% of demonstrations call the calculator) the greedy model mostly answers directly and is
almost never right; GRPO, rewarded for right answers alone, learns to call the tool. As shipped the config
demands +20 points (`demo.min_improvement`); the reduced CI run takes 15 GRPO steps (of 40), scores 100
held-out problems and demands +5 points.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo_tools.yaml"


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("LAZARUS_REDUCED", "1" if os.environ.get("CI") else "0") == "1",
                    reason="the reduced form has not yet been shown to gain within CI's budget on 2 cores; it runs "
                    "in full (LAZARUS_REDUCED=0) and as /work/shared/checks/7-tools-demo")
def test_tools_demo_grpo_raises_held_out_accuracy_and_tool_call_rate(tmp_path):
    # given the tools demo config, reduced in size (CI) or as shipped
    reduced = os.environ.get("LAZARUS_REDUCED", "1" if os.environ.get("CI") else "0") == "1"
    overrides = ["training.progress=false"]
    if reduced:
        overrides += ["training.max_steps=15", "eval.num_prompts=100", "demo.min_improvement=0.05"]
    args = [str(Path(sys.executable).parent / "lazarus"), "demo", "tools", "--config", str(CONFIG)]
    for o in overrides:
        args += ["--set", o]
    # when the demo runs end to end through the real CLI, from an empty directory
    proc = subprocess.run(args, capture_output=True, text=True, timeout=2300, cwd=tmp_path)
    # then it exits 0 (1 below demo.min_improvement) and reports both accuracies and tool-call rates
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    before, after, points = map(float, re.search(
        r"held-out accuracy: after SFT ([\d.]+) -> after GRPO ([\d.]+) \(([-+\d.]+) points\)", proc.stdout).groups())
    rate_before, rate_after = map(float, re.search(r"tool-call rate: ([\d.]+) -> ([\d.]+)", proc.stdout).groups())
    assert after - before >= (0.05 if reduced else 0.20), proc.stdout[-3000:]
    assert rate_after > rate_before
    assert points == pytest.approx(100 * (after - before), abs=0.06)
    assert (tmp_path / "runs" / "demo_tools" / "grpo" / "metrics.jsonl").exists()
