"""Env steps per second of expert training (`lazarus.experts.ppo.train`) against CleanRL's PPO recipe in torch.

Both train on CartPole-v1 for the same number of updates after one warm-up update (which, for us, compiles
the update step), and the same batch layout per row:

  mlp  ppo.py's recipe:          4 envs x 128 steps, 4 minibatches, 4 epochs
  gru  ppo_atari_lstm's layout:   8 envs x 128 steps, 4 minibatches of whole 128-step env sequences, 4 epochs
  gru  lazarus default:           8 envs x 128 steps, 16-step chunks, 4 minibatches, 4 epochs (torch: as above)

The baseline (bench/experts_torch.py) runs in the same bench run, in a subprocess with a python that has
torch (`--torch-python`, default .venv-bench/bin/python, which `make bench-experts` creates from PyPI's CPU
wheel). Without one the torch column says so and no ratio is printed. Printed: each side's env steps/s and
the ratio lazarus / torch (above 1: faster than the recipe in torch). On a shared machine both sides see the
same contention only roughly; run it when the machine is quiet for numbers to quote.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import lazarus  # noqa: F401  (OpenBLAS before mlx.core)

from lazarus.experts.config import preset
from lazarus.experts.ppo import train

ROOT = Path(__file__).resolve().parents[1]
ROWS = [  # (label, our arch, our config overrides, torch baseline arch)
    ("mlp  ppo.py recipe", "mlp", dict(num_envs=4, chunk_length=16), "mlp"),
    ("gru  128-step sequences", "gru", dict(num_envs=8, chunk_length=128, num_minibatches=4), "gru"),
    ("gru  lazarus default", "gru", dict(num_envs=8, chunk_length=16), "gru"),
]


def lazarus_rate(arch: str, overrides: dict, updates: int) -> float:
    """Env steps/s over `updates` updates, after one warm-up update (timed from its end)."""
    config = preset(
        "CartPole-v1", arch=arch, rollout_steps=128, update_epochs=4, learning_rate=2.5e-4, eval_every=10**9,
        stop_at_return=None, total_steps=(updates + 1) * overrides["num_envs"] * 128, **overrides,
    )
    marks = []
    train(config, on_update=lambda env_steps, metrics: marks.append((env_steps, time.perf_counter())))
    (first_steps, first_time), (last_steps, last_time) = marks[0], marks[-1]
    return (last_steps - first_steps) / (last_time - first_time)


def torch_rate(python: Path, arch: str, updates: int) -> float | None:
    if not python.exists():
        return None
    result = subprocess.run(
        [str(python), str(ROOT / "bench" / "experts_torch.py"), "--arch", arch, "--updates", str(updates)],
        capture_output=True, text=True, timeout=1200, check=False,
    )
    if result.returncode != 0:
        print(f"torch baseline failed: {result.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])["env_steps_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=10, help="Timed updates per row (after one warm-up).")
    parser.add_argument("--quick", action="store_true", help="3 updates per row, no torch baseline.")
    parser.add_argument("--torch-python", type=Path, default=ROOT / ".venv-bench" / "bin" / "python")
    args = parser.parse_args()
    updates = 3 if args.quick else args.updates
    print(f"{'row':28s} {'lazarus steps/s':>16s} {'torch steps/s':>14s} {'ratio':>7s}")
    for label, arch, overrides, torch_arch in ROWS:
        ours = lazarus_rate(arch, overrides, updates)
        theirs = None if args.quick else torch_rate(args.torch_python, torch_arch, updates)
        ratio = f"{ours / theirs:7.2f}" if theirs else "      -"
        theirs_text = f"{theirs:14.0f}" if theirs else f"{'not run':>14s}"
        print(f"{label:28s} {ours:16.0f} {theirs_text} {ratio}", flush=True)
    if not args.quick and not args.torch_python.exists():
        print(f"torch baseline not run: no {args.torch_python} (make bench-experts creates it)")


if __name__ == "__main__":
    main()
