"""The runtime's launchers against each other, in one run, on the demo's GRPO settings.

Rows (each ends in `ratio R`, higher is better):
- process (sync, 1 actor) vs local: steps/s of the learner + one `lazarus-actor` process over gRPC against
  every role in one process. Target >= 0.9 (the transport costs little).
- process (async k=1, 1 actor) vs local: the same with `runtime.mode: async, max_staleness: 1`, so the
  actor generates the next batch while the learner updates (generation and update overlap, as in
  PipelineRL/AReaL). Target >= 1.2.
- process (sync, 2 actors) vs 1 actor: steps/s with the batch's tasks split over two actor processes.
- coordinator trajectories/s N: the coordinator and hub alone, no model: 64 stand-in actors that answer
  every task instantly and a stand-in learner that learns nothing. Target >= 1,000.

The model is the demo's random-init LazyFox (~1M parameters) with the demo's GRPO settings (16 prompts x 8
completions x 32 new tokens, LoRA off as in the demo, dapo loss). The reward is a stand-in that differs
within every group (the share of digits in the completion), so every step runs a real update: a
random-init model never answers right, and a batch whose groups all score alike skips the update. The
first `WARMUP` steps (compiling, the actors joining) are left out; steps/s is measured from the learner's
own `elapsed_s` in metrics.jsonl.

`--quick`: micro model, few steps (CI smoke run of this script).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import lazarus  # noqa: F401  (OpenBLAS before mlx.core)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WARMUP = 2


def digit_share(prompts, completions, **kwargs):
    """Share of digits in the completion: differs within groups, so every step updates."""
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]


def config_overrides(work: Path, steps: int, size: str, extra: list[str]) -> list[str]:
    return [f"model.path={work}/model", "model.init_arch=lazyfox", f"model.init_size={size}",
            f"data.train={work}/data/rl_train.jsonl", f"data.eval={work}/data/rl_eval.jsonl",
            f"training.max_steps={steps}", "training.progress=false", "training.eval_every=0",
            "eval.num_prompts=1", "rl.rewards=[{function: runtime:digit_share}]", "eval.reward=digit_share",
            "training.save_every=0", *extra]


def steps_per_s(run_dir: Path) -> float:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "step_s" in r]
    timed = rows[WARMUP:]
    if len(timed) < 2:
        timed = rows
    span = timed[-1]["elapsed_s"] - timed[0]["elapsed_s"]
    return (len(timed) - 1) / span if span > 0 else float("nan")


def run(work: Path, name: str, steps: int, size: str, extra: list[str]) -> float:
    """One training run through the real CLI in its own process; returns its steps/s."""
    import subprocess

    run_dir = work / name
    args = [str(Path(sys.executable).parent / "lazarus"), "train", "grpo", "--config",
            str(ROOT / "configs" / "demo_math.yaml")]
    for o in config_overrides(work, steps, size, [f"training.run_dir={run_dir}", *extra]):
        args += ["--set", o]
    env = {**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "LAZARUS_CACHE": str(work / "cache")}
    t0 = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=1500)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    rate = steps_per_s(run_dir)
    print(f"  {name:<28} {rate:6.3f} steps/s ({time.perf_counter() - t0:.0f}s wall)", flush=True)
    return rate


def coordinator_throughput(actors: int = 64, steps: int = 40, prompts: int = 64, group: int = 8) -> float:
    """Trajectories/s through the coordinator and hub alone: stand-in actors and learner, no model."""
    from lazarus.config import load_config
    from lazarus.data.records import PromptRecord
    from lazarus.data.trajectory import Trajectory
    from lazarus.distributed.experience import ExperienceHub
    from lazarus.runtime.coordinator import Coordinator, TaskSource

    work = Path(tempfile.mkdtemp(prefix="lazarus-bench-coord-"))
    cfg = load_config(None, [f"training.batch_size={prompts}", f"generation.num_generations={group}",
                             f"training.max_steps={steps}", f"training.run_dir={work}", f"runtime.actors={actors}",
                             "runtime.mode=async", "runtime.max_staleness=1"])

    class StandInLearner:
        """Learns nothing: what is left is the coordinator's own cost."""

        def __init__(self):
            self.step, self.reward_functions = 0, []

        policy_version = property(lambda self: self.step)

        def open(self, resume=None):
            return {}

        def seed_step(self):
            pass

        def learn(self, trajectories):
            assert len(trajectories) == prompts * group
            self.step += 1
            return {"staleness_max": 0.0}

        def log(self, metrics):
            pass

        def checkpoint(self, state):
            pass

        def finish(self, state):
            return {}

        def close(self):
            pass

        def evaluate(self):
            return {}

    learner = StandInLearner()
    records = [PromptRecord(prompt=f"q{i}", columns={"answer": "1"}) for i in range(prompts * 4)]
    hub = ExperienceHub("bench", lambda: learner.policy_version)
    ids = [f"a{i}" for i in range(actors)]

    def pump() -> bool:
        ran = False
        for actor_id in ids:
            lease = hub.next_task(actor_id)
            if lease is None:
                continue
            task = lease.task
            trajectories = [Trajectory(prompt_ids=p, completion_ids=[7, 8, 9], behavior_logprobs=[-1.0] * 3,
                                       loss_mask=None, reward=float(j), group_id=g, task_id=task.task_id,
                                       actor_id=actor_id, policy_version=learner.policy_version,
                                       sampling=task.sampling)
                            for p, g in zip(task.prompts, task.group_ids) for j in range(task.group_size)]
            hub.push(actor_id, task.task_id, trajectories, nbytes=64 * len(trajectories))
            ran = True
        return ran

    tasks = TaskSource(cfg, records, [[1, 2, 3, 4]] * len(records), "bench")
    coordinator = Coordinator(cfg, learner, tasks, hub, pump=pump, echo=lambda line: None)
    t0 = time.perf_counter()
    coordinator.run()
    elapsed = time.perf_counter() - t0
    return steps * prompts * group / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="micro model, few steps (smoke run)")
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    size, steps = ("micro", 4) if args.quick else ("tiny", args.steps)
    work = Path(tempfile.mkdtemp(prefix="lazarus-bench-runtime-"))
    print(f"runtime bench: demo GRPO settings, random-init lazyfox {size}, {steps} steps per run "
          f"({WARMUP} warm-up steps left out), {os.cpu_count()} CPUs", flush=True)
    local = run(work, "local", steps, size, ["runtime.launcher=local"])
    sync1 = run(work, "process-sync-1", steps, size, ["runtime.launcher=process", "runtime.actors=1"])
    async1 = run(work, "process-async-k1-1", steps, size, ["runtime.launcher=process", "runtime.actors=1",
                                                            "runtime.mode=async", "runtime.max_staleness=1"])
    sync2 = run(work, "process-sync-2", steps, size, ["runtime.launcher=process", "runtime.actors=2"])
    print(f"process (sync, 1 actor) vs local steps/s: {sync1:.3f} vs {local:.3f}, ratio {sync1 / local:.2f}")
    print(f"process (async k=1, 1 actor) vs local steps/s: {async1:.3f} vs {local:.3f}, ratio {async1 / local:.2f}")
    print(f"process (sync, 2 actors) vs 1 actor steps/s: {sync2:.3f} vs {sync1:.3f}, ratio {sync2 / sync1:.2f}")
    rate = coordinator_throughput(steps=5 if args.quick else 40)
    print(f"coordinator trajectories/s {rate:,.0f} (64 stand-in actors, no model)")


if __name__ == "__main__":
    main()
