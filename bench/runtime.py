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
- ray (1 actor) vs process: steps/s of `--launcher ray --actors 1` (a local Ray instance started by the run)
  against the process row above, same settings. Ray listens on every interface, so this run goes through
  `unshare -n` (a loopback-only network namespace; needs root or user namespaces) by itself. Target >= 0.9.
- gradient sync vs mx.distributed ring: rounds/s of the data-parallel learners' gradient sync (the leader
  pushes into its owner-stepped parameter store in-process, a follower process pushes over gRPC, the leader
  averages and publishes, the follower pulls the new weights: `runtime/replicas.py`) against 2 processes
  averaging the same gradient with `mx.distributed.init(backend="ring")` + `nn.average_gradients`, for a
  gradient of `--params` float32 values. Ratio > 1: ours is faster.

The model is the demo's random-init LazyFox (~1M parameters) with the demo's GRPO settings (16 prompts x 8
completions x 32 new tokens, LoRA off as in the demo, dapo loss). The reward is a stand-in that differs
within every group (the share of digits in the completion), so every step runs a real update: a
random-init model never answers right, and a batch whose groups all score alike skips the update. The
first `WARMUP` steps (compiling, the actors joining) are left out; steps/s is measured from the learner's
own `elapsed_s` in metrics.jsonl.

`--quick`: micro model, few steps (CI smoke run of this script). `--only ROW` runs some rows (launchers, ray,
gradient-sync, coordinator; repeatable).
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


def run(work: Path, name: str, steps: int, size: str, extra: list[str], loopback_namespace: bool = False) -> float:
    """One training run of the demo's GRPO config through the real CLI in its own process; returns its steps/s.

    `loopback_namespace`: in a new network namespace with only `lo` up (for Ray, which binds every interface)."""
    run_dir = work / name
    return train_cli(name, ROOT / "configs" / "demo_math.yaml",
                     config_overrides(work, steps, size, [f"training.run_dir={run_dir}", *extra]), run_dir,
                     work / "cache", loopback_namespace)


def train_cli(name: str, config: Path | None, overrides: list[str], run_dir: Path, cache: Path,
              loopback_namespace: bool = False) -> float:
    """`lazarus train grpo [--config C] --set ...` in its own process (bench/ on PYTHONPATH, so rewards can be
    `module:function` of a bench script); returns the steps/s of its metrics.jsonl after the warm-up."""
    import shlex
    import subprocess

    args = [str(Path(sys.executable).parent / "lazarus"), "train", "grpo"]
    if config is not None:
        args += ["--config", str(config)]
    for o in overrides:
        args += ["--set", o]
    env = {**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "LAZARUS_CACHE": str(cache), "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    if loopback_namespace:
        args = ["unshare", "-n", "bash", "-c", f"ip link set lo up && exec {shlex.join(args)}"]
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
    from lazarus.distributed.hub import ExperienceHub
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


# --- gradient sync: ours (owner-stepped store + gRPC) against MLX's ring all-reduce ---------------------------


def gradient(params: int, seed: int) -> dict:
    import mlx.core as mx

    sizes = [params // 4, params // 4, params - 2 * (params // 4)]
    grads = {f"layer{i}.weight": mx.random.normal((n,), key=mx.random.key(seed + i)) for i, n in enumerate(sizes)}
    mx.eval(list(grads.values()))
    return grads


def follower_worker(address: str, params: int, rounds: int) -> float:
    """Rounds/s of a follower replica's `RemoteSync.exchange`: push, wait for the leader's step, pull."""
    from lazarus.distributed.client import ParameterClient
    from lazarus.runtime.replicas import RemoteSync

    sync = RemoteSync(ParameterClient(address, timeout=120.0), "learner-1", step_timeout=120.0)
    grads = gradient(params, 1)
    version, _ = sync.pull(-1)
    version, _ = sync.exchange(grads, version)  # warm-up
    start = time.perf_counter()
    for _ in range(rounds):
        version, _ = sync.exchange(grads, version)
    return rounds / (time.perf_counter() - start)


def ring_worker(params: int, rounds: int) -> float:
    """Rounds/s of `nn.average_gradients` over MLX's ring backend (MLX_RANK and MLX_HOSTFILE set)."""
    import mlx.core as mx
    import mlx.nn as nn

    group = mx.distributed.init(backend="ring", strict=True)
    grads = gradient(params, group.rank())
    mx.eval(nn.average_gradients(grads, group=group))  # warm-up
    start = time.perf_counter()
    for _ in range(rounds):
        mx.eval(nn.average_gradients(grads, group=group))
    return rounds / (time.perf_counter() - start)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_rates(commands: list[tuple[list[str], dict]], timeout: float) -> list[float]:
    import subprocess

    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for cmd, env in commands]
    rates = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        if p.returncode != 0:
            raise SystemExit(f"gradient sync worker failed ({p.returncode}): {err[-2000:]}")
        rates.append(float(out.strip().splitlines()[-1]))
    return rates


def gradient_sync(params: int, rounds: int) -> tuple[float, float]:
    """(ours, ring) rounds/s for 2 replicas syncing a gradient of `params` float32 values."""
    import threading

    from lazarus.distributed.server import ParameterStore, serve

    grads = gradient(params, 0)
    store = ParameterStore({k: v * 0 for k, v in grads.items()}, mode="sync", optimizer=None)
    server = serve(store, host="127.0.0.1", port=0)
    me = [sys.executable, str(Path(__file__).resolve())]
    stop = threading.Event()

    def leader() -> None:  # what runtime.replicas.ReplicaGroup does for replica 0, minus the membership checks
        while not stop.is_set():
            version = store.version
            store.push(version, grads, worker_id="learner-0")
            while len(store.wait_for_push(2, 0.5)) < 2:
                if stop.is_set():
                    return
            mean, _ = store.take_mean(version)
            store.publish({k: -1e-3 * g for k, g in mean.items()})

    thread = threading.Thread(target=leader, daemon=True)
    thread.start()
    try:
        [ours] = worker_rates([(me + ["--worker", "follower", "--address", server.address, "--params", str(params),
                                      "--rounds", str(rounds)], dict(os.environ))], timeout=900)
    finally:
        stop.set()
        server.stop(grace=0.5)
        thread.join(timeout=5)
    with tempfile.TemporaryDirectory() as d:
        hostfile = Path(d) / "hosts.json"
        hostfile.write_text(json.dumps([[f"127.0.0.1:{free_port()}"], [f"127.0.0.1:{free_port()}"]]))
        ring = worker_rates([(me + ["--worker", "ring", "--params", str(params), "--rounds", str(rounds)],
                              {**os.environ, "MLX_RANK": str(r), "MLX_HOSTFILE": str(hostfile)}) for r in range(2)],
                            timeout=900)
    return ours, min(ring)  # a ring round ends when the slower rank has the result


def can_unshare() -> bool:
    import shutil
    import subprocess

    return bool(shutil.which("unshare")) and subprocess.run(["unshare", "-n", "true"],
                                                            capture_output=True).returncode == 0


ROWS = ("launchers", "ray", "gradient-sync", "coordinator")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="micro model, few steps (smoke run)")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--only", action="append", choices=ROWS, help="run only these rows (repeatable)")
    parser.add_argument("--params", type=int, default=1 << 20, help="gradient sync: float32 values per gradient")
    parser.add_argument("--rounds", type=int, default=20, help="gradient sync: rounds timed per backend")
    parser.add_argument("--worker", choices=["follower", "ring"], help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "follower":
        print(follower_worker(args.address, args.params, args.rounds))
        return
    if args.worker == "ring":
        print(ring_worker(args.params, args.rounds))
        return
    rows = set(args.only or ROWS)
    size, steps = ("micro", 4) if args.quick else ("tiny", args.steps)
    params, rounds = (1 << 16, 3) if args.quick else (args.params, args.rounds)
    work = Path(tempfile.mkdtemp(prefix="lazarus-bench-runtime-"))
    print(f"runtime bench: demo GRPO settings, random-init lazyfox {size}, {steps} steps per run "
          f"({WARMUP} warm-up steps left out), {os.cpu_count()} CPUs", flush=True)
    sync1 = None
    if rows & {"launchers", "ray"}:
        sync1 = run(work, "process-sync-1", steps, size, ["runtime.launcher=process", "runtime.actors=1"])
    if "launchers" in rows:
        local = run(work, "local", steps, size, ["runtime.launcher=local"])
        async1 = run(work, "process-async-k1-1", steps, size, ["runtime.launcher=process", "runtime.actors=1",
                                                                "runtime.mode=async", "runtime.max_staleness=1"])
        sync2 = run(work, "process-sync-2", steps, size, ["runtime.launcher=process", "runtime.actors=2"])
        print(f"process (sync, 1 actor) vs local steps/s: {sync1:.3f} vs {local:.3f}, ratio {sync1 / local:.2f}")
        print(f"process (async k=1, 1 actor) vs local steps/s: {async1:.3f} vs {local:.3f}, "
              f"ratio {async1 / local:.2f}")
        print(f"process (sync, 2 actors) vs 1 actor steps/s: {sync2:.3f} vs {sync1:.3f}, ratio {sync2 / sync1:.2f}")
    if "ray" in rows:
        try:
            import ray  # noqa: F401
        except ImportError:
            print("ray (1 actor) vs process: skipped (Ray is not installed: pip install lazarus[ray])")
        else:
            if not can_unshare():
                print("ray (1 actor) vs process: skipped (needs `unshare -n`: root or user namespaces, to keep Ray "
                      "off the network)")
            else:
                ray_rate = run(work, "ray-1", steps, size, ["runtime.launcher=ray", "runtime.actors=1"],
                               loopback_namespace=True)
                print(f"ray (1 actor) vs process steps/s: {ray_rate:.3f} vs {sync1:.3f}, ratio {ray_rate / sync1:.2f} "
                      f"(target >= 0.9)")
    if "gradient-sync" in rows:
        ours, ring = gradient_sync(params, rounds)
        print(f"gradient sync vs mx.distributed ring rounds/s ({params * 4 / 2**20:.2f} MiB, 2 processes): "
              f"{ours:.1f} vs {ring:.1f}, ratio {ours / ring:.2f}")
    if "coordinator" in rows:
        rate = coordinator_throughput(steps=5 if args.quick else 40)
        print(f"coordinator trajectories/s {rate:,.0f} (64 stand-in actors, no model)")


if __name__ == "__main__":
    main()
