"""The demo runs end to end through the real CLI: data, SFT, held-out eval, GRPO, eval, plots.

It does not yet assert that GRPO raises accuracy: on this machine the tiny model's SFT plateaus too low
for a reliable +10 points in the time budget (see the issue's closing note). `demo.min_improvement`
turns that check on.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_demo_runs_sft_then_grpo_and_reports_held_out_accuracy(tmp_path):
    # given the demo config, reduced in size (CI) or as shipped
    reduced = os.environ.get("LAZARUS_REDUCED", "1" if os.environ.get("CI") else "0") == "1"
    overrides = [
        f"training.run_dir={tmp_path / 'demo'}", f"model.path={tmp_path / 'demo/model'}",
        f"data.train={tmp_path / 'demo/data/rl_train.jsonl'}", f"data.eval={tmp_path / 'demo/data/rl_eval.jsonl'}",
        "training.progress=false",
    ]
    if reduced:
        overrides += ["training.max_steps=10", "demo.sft_steps=100", "eval.num_prompts=50"]
    args = [str(Path(sys.executable).parent / "lazarus"), "demo", "--config", "configs/demo_math.yaml"]
    for o in overrides:
        args += ["--set", o]
    # when the demo runs end to end through the real CLI
    proc = subprocess.run(args, capture_output=True, text=True, timeout=1500)
    # then it reports both accuracies and wrote the curves
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "held-out accuracy: after SFT" in proc.stdout
    assert (tmp_path / "demo" / "grpo" / "plots" / "overview.png").exists()
