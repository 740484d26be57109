"""The Ray launcher against the process launcher, and our gRPC gradient sync against MLX's ring all-reduce.

Two lines, each a ratio of two things measured in this same run:

- `ray (1 actor) vs process`: GRPO steps/s of `lazarus train --launcher ray --actors 1` over the same run
  with `--launcher process --actors 1` (micro random-init llama, same config and seed; steps/s from the
  learner's metrics between step 2 and the last, so start-up is not counted). Target: ratio >= 0.9.
- `gradient sync vs mx.distributed ring`: rounds/s of 2 processes syncing a gradient of `--params` floats
  through our parameter server (push to `ParameterStore(mode="sync", workers=2)`, wait for the averaged step,
  pull the new weights) over rounds/s of 2 processes averaging the same gradient with
  `mx.distributed.init(backend="ring")` + `nn.average_gradients`. Ratio > 1: ours is faster.

Ray listens on every interface, so this script re-runs itself in a loopback-only network namespace
(`unshare -n`, `ip link set lo up`); it needs root or user namespaces. Everything binds 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lazarus  # noqa: F401  (OpenBLAS before mlx.core)

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]


# --- gradient sync: the two worker kinds (run as subprocesses of this script) ----------------------------


def gradient(params: int, seed: int) -> dict:
    import mlx.core as mx

    sizes = [params // 4, params // 4, params - 2 * (params // 4)]
    grads = {f"layer{i}.weight": mx.random.normal((n,), key=mx.random.key(seed + i)) for i, n in enumerate(sizes)}
    mx.eval(list(grads.values()))
    return grads


def grpc_worker(address: str, rank: int, params: int, rounds: int) -> float:
    """Rounds/s of push gradients -> wait for the averaged step -> pull the new weights."""
    from lazarus.distributed.client import ParameterClient

    client = ParameterClient(address, timeout=120.0)
    grads = gradient(params, rank)
    version = client.pull_if_newer(-1, scope="trainable").version

    def one_round(v: int) -> int:
        result = client.push_gradients(grads, v, worker_id=f"w{rank}")
        if not result.applied:
            next(iter(client.watch(v, timeout=120)))
        return client.pull_if_newer(v, scope="trainable").version

    version = one_round(version)  # warm-up
    start = time.perf_counter()
    for _ in range(rounds):
        version = one_round(version)
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


def run_workers(commands: list[tuple[list[str], dict]], timeout: float) -> list[float]:
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for cmd, env in commands]
    rates = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        if p.returncode != 0:
            raise RuntimeError(f"worker failed ({p.returncode}): {err[-2000:]}")
        rates.append(float(out.strip().splitlines()[-1]))
    return rates


def gradient_sync(params: int, rounds: int) -> dict:
    import mlx.core as mx

    from lazarus.distributed.server import ParameterStore, serve

    weights = {k: mx.zeros_like(v) for k, v in gradient(params, 0).items()}
    store = ParameterStore(weights, mode="sync", workers=2, optimizer="sgd", learning_rate=1e-3)
    server = serve(store, host="127.0.0.1", port=0)
    me = [sys.executable, str(Path(__file__).resolve())]
    try:
        grpc_rates = run_workers([(me + ["--worker", "grpc", "--address", server.address, "--rank", str(r),
                                         "--params", str(params), "--rounds", str(rounds)], dict(os.environ))
                                  for r in range(2)], timeout=900)
    finally:
        server.stop(grace=0.5)
    with tempfile.TemporaryDirectory() as d:
        hostfile = Path(d) / "hosts.json"
        hostfile.write_text(json.dumps([[f"127.0.0.1:{free_port()}"], [f"127.0.0.1:{free_port()}"]]))
        ring_rates = run_workers([(me + ["--worker", "ring", "--params", str(params), "--rounds", str(rounds)],
                                   {**os.environ, "MLX_RANK": str(r), "MLX_HOSTFILE": str(hostfile)})
                                  for r in range(2)], timeout=900)
    grpc, ring = min(grpc_rates), min(ring_rates)  # a round ends when the slower rank has the result
    return {"params": params, "grpc_rounds_per_s": grpc, "ring_rounds_per_s": ring, "ratio": grpc / ring}


# --- ray vs process ----------------------------------------------------------------------------------------


def steps_per_s(run_dir: Path) -> float:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = sorted((r["step"], r["time"]) for r in rows if "reward_mean" in r)
    (s0, t0), (s1, t1) = steps[1], steps[-1]
    return (s1 - s0) / (t1 - t0)


def train(launcher: str, workdir: Path, steps: int) -> float:
    run_dir = workdir / f"run-{launcher}"
    command = [str(BIN / "lazarus"), "train", "grpo", "--config", str(ROOT / "configs/grpo_math.yaml"),
               "--launcher", launcher, "--actors", "1",
               "--set", f"model.path={workdir / 'model'}", "--set", "model.init_arch=llama",
               "--set", "model.init_size=micro", "--set", f"data.train={workdir / 'data/rl_train.jsonl'}",
               "--set", f"data.eval={workdir / 'data/rl_eval.jsonl'}", "--set", f"training.max_steps={steps}",
               "--set", "training.batch_size=4", "--set", f"training.run_dir={run_dir}",
               "--set", "training.progress=false", "--set", "training.save_every=0",
               "--set", "generation.max_new_tokens=16", "--set", "eval.num_prompts=1"]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "LAZARUS_CACHE": str(workdir / "cache")}
    out = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800, cwd=workdir)
    if out.returncode != 0:
        raise RuntimeError(f"{launcher} run failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return steps_per_s(run_dir)


def ray_vs_process(steps: int) -> dict:
    with tempfile.TemporaryDirectory() as d:
        workdir = Path(d)
        process = train("process", workdir, steps)  # also writes the model and data both runs use
        ray = train("ray", workdir, steps)
    return {"steps": steps, "process_steps_per_s": process, "ray_steps_per_s": ray, "ratio": ray / process}


def in_loopback_namespace() -> bool:
    return os.environ.get("LAZARUS_BENCH_NETNS") == "1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12, help="GRPO steps per launcher run")
    parser.add_argument("--params", type=int, default=1 << 20, help="gradient size in float32 values")
    parser.add_argument("--rounds", type=int, default=20, help="gradient sync rounds timed per backend")
    parser.add_argument("--skip-ray", action="store_true", help="only the gradient sync line")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worker", choices=["grpc", "ring"], help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    parser.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "grpc":
        print(grpc_worker(args.address, args.rank, args.params, args.rounds))
        return
    if args.worker == "ring":
        print(ring_worker(args.params, args.rounds))
        return
    if not in_loopback_namespace():
        if not shutil.which("unshare"):
            sys.exit("bench/ray_runtime.py needs `unshare` (util-linux) to keep Ray off the network")
        inner = " ".join([sys.executable, *map(_quote, sys.argv)])
        os.execvp("unshare", ["unshare", "-n", "bash", "-c",
                              f"ip link set lo up && LAZARUS_BENCH_NETNS=1 exec {inner}"])
    results = {"gradient_sync": gradient_sync(args.params, args.rounds)}
    g = results["gradient_sync"]
    print(f"gradient sync vs mx.distributed ring ({g['params'] * 4 / 2**20:.1f} MiB, 2 processes): "
          f"grpc {g['grpc_rounds_per_s']:.1f} rounds/s, ring {g['ring_rounds_per_s']:.1f} rounds/s, "
          f"ratio {g['ratio']:.2f}", flush=True)
    if not args.skip_ray:
        results["ray_vs_process"] = r = ray_vs_process(args.steps)
        print(f"ray (1 actor) vs process: process {r['process_steps_per_s']:.3f} steps/s, ray "
              f"{r['ray_steps_per_s']:.3f} steps/s, ratio {r['ratio']:.2f} (target >= 0.9)", flush=True)
    if args.json:
        print(json.dumps(results))


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


if __name__ == "__main__":
    main()
