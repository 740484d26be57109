"""Env steps per second of expert training (`lazarus.experts.ppo.train`) against CleanRL's PPO recipe in torch.

Both train on CartPole-v1 for the same number of updates after one warm-up update (which, for us, compiles
the update step), and the same batch layout per row:

  mlp  ppo.py's recipe:          4 envs x 128 steps, 4 minibatches, 4 epochs
  gru  ppo_atari_lstm's layout:   8 envs x 128 steps, 4 minibatches of whole 128-step env sequences, 4 epochs
  gru  lazarus default:           8 envs x 128 steps, 16-step chunks, 4 minibatches, 4 epochs (torch: as above)

A last row measures the rollout alone with env workers (`PPOConfig.workers`): env steps per second of
collecting CartPole-v1 rollouts (GRU, 16 envs x 128 steps) in N worker processes against in this process,
measured one after the other in the same run; the ratio above 1 is the speed-up (it needs free cores).

The baseline (bench/experts_torch.py) runs in the same bench run, in a subprocess with a python that has
torch (`--torch-python`, default .venv-bench/bin/python, which `make bench-experts` creates from PyPI's CPU
wheel; torch runs one intra-op thread, which suits networks this small). Without one the torch columns say
so and no ratio is printed. Printed: each side's env steps per wall second and per CPU second of its process,
and the ratios lazarus / torch (above 1: faster than the recipe in torch). On a busy machine the wall-clock
rates depend on the CPU share each process happened to get; the per-CPU-second ratio is the steadier one.
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


def lazarus_rate(arch: str, overrides: dict, updates: int) -> tuple[float, float]:
    """(env steps per wall second, per CPU second of this process) over `updates` updates after a warm-up one."""
    config = preset(
        "CartPole-v1", arch=arch, rollout_steps=128, update_epochs=4, learning_rate=2.5e-4, eval_every=10**9,
        stop_at_return=None, total_steps=(updates + 1) * overrides["num_envs"] * 128, **overrides,
    )
    marks = []
    train(config, on_update=lambda env_steps, _: marks.append((env_steps, time.perf_counter(), time.process_time())))
    (first_steps, first_wall, first_cpu), (last_steps, last_wall, last_cpu) = marks[0], marks[-1]
    return (last_steps - first_steps) / (last_wall - first_wall), (last_steps - first_steps) / (last_cpu - first_cpu)


def collection_rate(workers: int, rollouts: int, num_envs: int = 16, steps: int = 128) -> float:
    """Env steps per wall second of `rollouts` CartPole-v1 GRU rollouts over `workers` env workers (0: here),
    after one warm-up rollout (worker start-up and imports are not timed)."""
    import mlx.core as mx

    from lazarus.experts.policy import ExpertPolicy, RolloutPolicy
    from lazarus.experts.ppo import policy_spec
    from lazarus.experts.workers import EnvWorkers

    config = preset("CartPole-v1", arch="gru", num_envs=num_envs, rollout_steps=steps, workers=workers)
    mx.random.seed(0)
    policy = RolloutPolicy(ExpertPolicy(policy_spec(config)))
    collection = EnvWorkers(config, policy.spec)
    try:
        collection.collect(policy, steps, config.gamma)
        started = time.perf_counter()
        for _ in range(rollouts):
            collection.collect(policy, steps, config.gamma)
        return rollouts * num_envs * steps / (time.perf_counter() - started)
    finally:
        collection.close()


def torch_rate(python: Path, arch: str, updates: int) -> tuple[float, float] | None:
    if not python.exists():
        return None
    result = subprocess.run(
        [str(python), str(ROOT / "bench" / "experts_torch.py"), "--arch", arch, "--updates", str(updates)],
        capture_output=True, text=True, timeout=1200, check=False,
    )
    if result.returncode != 0:
        print(f"torch baseline failed: {result.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    report = json.loads(result.stdout.strip().splitlines()[-1])
    return report["env_steps_per_s"], report["env_steps_per_cpu_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=10, help="Timed updates per row (after one warm-up).")
    parser.add_argument("--quick", action="store_true", help="3 updates per row, no torch baseline.")
    parser.add_argument("--torch-python", type=Path, default=ROOT / ".venv-bench" / "bin" / "python")
    parser.add_argument("--workers", type=int, default=2, help="Env worker processes of the last row.")
    args = parser.parse_args()
    updates = 3 if args.quick else args.updates
    print(f"{'row':26s} {'lazarus steps/s':>15s} {'torch steps/s':>13s} {'ratio':>6s}   "
          f"{'per CPU-s: lazarus':>18s} {'torch':>7s} {'ratio':>6s}")
    for label, arch, overrides, torch_arch in ROWS:
        ours = lazarus_rate(arch, overrides, updates)
        theirs = None if args.quick else torch_rate(args.torch_python, torch_arch, updates)
        if theirs is None:
            print(f"{label:26s} {ours[0]:15.0f} {'not run':>13s} {'-':>6s}   {ours[1]:18.0f} {'-':>7s} {'-':>6s}",
                  flush=True)
        else:
            print(f"{label:26s} {ours[0]:15.0f} {theirs[0]:13.0f} {ours[0] / theirs[0]:6.2f}   "
                  f"{ours[1]:18.0f} {theirs[1]:7.0f} {ours[1] / theirs[1]:6.2f}", flush=True)
    rollouts = 3 if args.quick else 10
    alone, split = collection_rate(0, rollouts), collection_rate(args.workers, rollouts)
    print(f"env workers: CartPole-v1 GRU rollouts, 16 envs x 128 steps: 1 process {alone:.0f} env steps/s, "
          f"{args.workers} worker processes {split:.0f} env steps/s, ratio {split / alone:.2f}", flush=True)
    if not args.quick and not args.torch_python.exists():
        print(f"torch baseline not run: no {args.torch_python} (make bench-experts creates it)")


if __name__ == "__main__":
    main()
