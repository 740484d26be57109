"""One GRPO step as the peers were measured: random-init llama, 4 prompts x 8 completions x 32 new tokens,
LoRA rank 8, float32, beta 0, at ~1M (tiny) and ~10M (small) parameters.

Each step is the local launcher's two halves, the actor's `run_task` then the learner's `learn`, with EOS disabled so
every completion is full length. Per step it prints total / generation / update seconds, generation
tokens/s, the process's peak RSS (getrusage, since process start), the MLX allocator's peak during the step
and `peak_memory_gb` (the larger of the two, what the trainer logs). Each size runs in its own fresh process so its
RSS is its own. Step 1 includes compiling the update step and is left out of the medians.

Baseline in the same process: the step's 32 completions generated in one batch (what the trainer does)
vs the same engine limited to 4 sequences at a time (how mlx-lm-lora generates); the ratio printed is
batched tokens/s / 4-at-a-time tokens/s (higher is better).

The reward is a stand-in that differs between completions of a prompt (the share of digits in the text,
plus a small length term):
a random-init model never answers right, and a batch whose groups all score alike skips the update.

Then, for the update's forward pass on the step's batch shape: its time, the time of the same model's
matmuls alone (and their GFLOP/s), and `exp` per element in MLX (its built-in kernel, and a compiled one)
against NumPy. On Linux x86 MLX's built-in CPU kernels have no SIMD transcendental functions, so softmax
and log-softmax cost far more than their matmuls there; compiled functions (the update step, SiLU) get
SIMD kernels from MLX's JIT once `lazarus.platform.setup_native_jit` has it build for this CPU (Apple
silicon runs them vectorized, or on the GPU).

Without `--peer`, the peers' figures are fixed constants measured earlier on this machine, not in this run.
With `--peer trl`, TRL's GRPOTrainer (torch on the CPU, from the separate venv that `make bench-peers`
builds, never a project dependency) runs the same step in the same run: the same model directory,
prompts, reward and settings (bench/peers/trl_grpo.py), with and without top-k 20 / top-p 0.95, each
size and setting in fresh processes; it prints `ratio lazarus/trl` for seconds per step and peak RSS
(lower is better for Lazarus).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import lazarus  # noqa: F401  (OpenBLAS before mlx.core)

# isort: split
import mlx.core as mx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generation import eos_disabled

from lazarus.config import load_config
from lazarus.data.math import write_math_dataset
from lazarus.inference.engine import Engine
from lazarus.models.load import num_parameters
from lazarus.models.tiny import init_model
from lazarus.observe.memory import peak_memory_gb, reset_peak
from lazarus.runtime.local import local_roles
from lazarus.env.rollout import sampling_params
from lazarus.env.rewards import RewardFunction
from lazarus.training.rl import collate

PROMPTS, GROUP, NEW_TOKENS, LORA_RANK = 4, 8, 32, 8
PEER_BATCH = 4  # mlx-lm-lora generates this many sequences at a time

#: Reported, not measured in this run: seconds per step and peak RSS (GB) of the peers on this machine.
PEERS = {
    "tiny": {"TRL (torch CPU)": (0.35, 0.69), "mlx-lm-lora": (1.5, 0.15)},
    "small": {"TRL (torch CPU)": (1.1, 1.26), "mlx-lm-lora": (5.5, 0.29)},
}


def digit_share(prompts, completions, **_) -> list[float]:
    """Stand-in reward that differs between completions of one prompt: the share of digits in the text, plus a
    term of 0.001 per 100 characters so that a group with no digits at all (likely under top-k) still varies."""
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) + 1e-5 * len(c) for c in completions]


def peak_rss_gb() -> float:
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (max_rss if sys.platform == "darwin" else max_rss * 1024) / 1e9


def generation_tokens_per_s(engine: Engine, prompt_ids, params) -> float:
    start = time.perf_counter()
    completions = engine.generate(prompt_ids, GROUP, params)
    return sum(len(c.token_ids) for c in completions) / (time.perf_counter() - start)


def prepare(size: str, steps: int) -> tuple[Path, Path, Path]:
    """A scratch directory with the step's data and a fresh random-init llama of `size` (seed 0)."""
    work = Path(tempfile.mkdtemp(prefix=f"lazarus-bench-grpo-{size}-"))
    write_math_dataset(work / "data", n_train=PROMPTS * max(steps, 1), n_eval=0, kinds=["arithmetic"], seed=0)
    return work, work / "data" / "rl_train.jsonl", init_model("llama", size, work / f"llama-{size}", seed=0)


def run_size(size: str, steps: int, baseline_repeats: int, sampling: tuple[str, ...] = (),
             prepared: tuple[Path, Path, Path] | None = None, breakdown: bool = True) -> dict:
    """Run `steps` GRPO steps on a fresh random-init llama of `size`; print one line per step.

    `sampling` adds config overrides (e.g. generation.top_k=20); `prepared` reuses a `prepare` result (the
    peer runs on the same files); `breakdown` adds the batched-generation baseline and the forward breakdown.
    """
    work, data, model_dir = prepared or prepare(size, steps)
    cfg = load_config(None, [
        "algorithm=grpo", f"model.path={model_dir}", f"data.train={data}",
        f"training.run_dir={work}/run", "training.progress=false", f"training.batch_size={PROMPTS}",
        f"training.max_steps={steps}", f"generation.num_generations={GROUP}",
        f"generation.max_new_tokens={NEW_TOKENS}", "generation.temperature=1.0", "rl.beta=0",
        "lora.enabled=true", f"lora.rank={LORA_RANK}", *sampling])
    trainer, actor, tasks = local_roles(cfg)
    # A random-init model never answers right, so with the accuracy reward every group would score 0 and
    # the trainer would (rightly) skip the update. The peers ran the update every step; so does this.
    trainer.reward_functions = actor.reward_functions = [RewardFunction("digit_share", digit_share)]
    print(f"\n{size}: llama {num_parameters(trainer.model) / 1e6:.2f}M params (incl. LoRA r{LORA_RANK}), "
          f"{mx.default_device()}, float32")
    print(f"{'step':>4} {'step_s':>7} {'gen_s':>7} {'update_s':>8} {'gen tok/s':>9} {'peak RSS GB':>11} "
          f"{'MLX alloc GB':>12} {'peak_memory_gb':>14}")
    rows = []
    with eos_disabled(trainer.tokenizer):
        for _ in range(steps):
            reset_peak()
            trainer.seed_step()
            t0 = time.perf_counter()
            task = tasks.next_task(PROMPTS, trainer.policy_version)
            actor.sync_weights()
            trajectories = actor.run_task(task)
            t1 = time.perf_counter()
            metrics = trainer.learn(trajectories)  # the learner's step: one version further
            assert not metrics["skipped_update"], "the bench must time a real update"
            t2 = time.perf_counter()
            generated = sum(t.num_completion_tokens for t in trajectories)
            row = {"step_s": t2 - t0, "gen_s": t1 - t0, "update_s": t2 - t1, "gen_tok_s": generated / (t1 - t0),
                   "rss_gb": peak_rss_gb(), "mlx_gb": mx.get_peak_memory() / 1e9, "peak_gb": peak_memory_gb()}
            rows.append(row)
            print(f"{trainer.step:>4} {row['step_s']:>7.3f} {row['gen_s']:>7.3f} {row['update_s']:>8.3f} "
                  f"{row['gen_tok_s']:>9.0f} {row['rss_gb']:>11.3f} {row['mlx_gb']:>12.3f} {row['peak_gb']:>14.3f}")
        if not breakdown:
            timed = rows[1:] or rows
            return {k: statistics.median(r[k] for r in timed) for k in timed[0]}

        prompt_ids = task.prompts
        params = sampling_params(task)
        batched = actor.engine
        four_at_a_time = Engine(trainer.model, trainer.tokenizer, completion_batch_size=PEER_BATCH,
                                prefill_batch_size=PEER_BATCH)
        generation_tokens_per_s(four_at_a_time, prompt_ids, params)  # warm-up at that batch shape
        ours, peer_way = [], []
        for _ in range(baseline_repeats):  # interleaved so load from other processes hits both alike
            peer_way.append(generation_tokens_per_s(four_at_a_time, prompt_ids, params))
            ours.append(generation_tokens_per_s(batched, prompt_ids, params))
    timed = rows[1:] or rows
    summary = {k: statistics.median(r[k] for r in timed) for k in timed[0]}
    summary.update(size=size, batched_tok_s=statistics.median(ours), peer_way_tok_s=statistics.median(peer_way))
    width = collate(trajectories, trainer.pad_id).inputs.shape[1]  # the batch shape `learn` ran on
    summary.update(forward_breakdown(trainer.model, PROMPTS * GROUP, width))
    return summary


def overlap(size: str, steps: int, sampling: tuple[str, ...], prepared: tuple[Path, Path, Path],
            quick: bool = False) -> dict:
    """The same step through the CLI: the local launcher (generate, then update) and the process launcher in
    async mode with max staleness 1 (one actor generates the next batch while the learner updates).

    Seconds per step from each run's metrics.jsonl after its warm-up steps. EOS stays on here (a random-init
    model ends ~3% of its 32-token completions early, alike in both runs).

    The rate is the mean over the steps after two warm-up steps (a pipeline's steps alternate between
    waiting for a batch and not, so a median would flatter it): OVERLAP_STEPS of them, since with 8 one
    hiccup of the host (a 1.5 s step among 0.24-0.63 s ones, 7 Dec 2026) moved the tiny async rate by 50%."""
    from runtime import train_cli

    work, data, model_dir = prepared
    steps = max(steps, 8 if quick else OVERLAP_STEPS)  # two warm-up steps are left out of the rate
    base = [f"model.path={model_dir}", f"data.train={data}", "training.progress=false", "training.eval_every=0",
            "training.save_every=0", f"training.batch_size={PROMPTS}", f"training.max_steps={steps}",
            f"generation.num_generations={GROUP}", f"generation.max_new_tokens={NEW_TOKENS}",
            "generation.temperature=1.0", "rl.beta=0", "lora.enabled=true", f"lora.rank={LORA_RANK}",
            "rl.rewards=[{function: grpo_step:digit_share}]", "eval.num_prompts=1",
            "eval.reward=grpo_step:digit_share", *sampling]
    tag = "-".join(x.rsplit("=", 1)[-1] for x in sampling) or "t1"
    rates = {}
    for name, launcher in (("local", ["runtime.launcher=local"]),
                           ("async", ["runtime.launcher=process", "runtime.actors=1", "runtime.mode=async",
                                      "runtime.max_staleness=1"])):
        run_dir = work / f"overlap-{size}-{tag}-{name}"
        rates[name] = train_cli(f"{size} {name}", None, [*base, f"training.run_dir={run_dir}", *launcher], run_dir,
                                work / "cache")
    return {"sync_step_s": 1 / rates["local"], "async_step_s": 1 / rates["async"]}


def _seconds(fn, repeats: int = 5) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def forward_breakdown(model, rows: int, width: int) -> dict:
    """Where the update's forward pass goes: the whole forward on the step's batch shape, the same
    model's matmuls alone, and `exp` per element in MLX against NumPy's (the transcendental functions
    behind softmax, SiLU and log-softmax)."""
    import numpy as np
    from mlx.utils import tree_flatten

    tokens = mx.array(np.random.default_rng(0).integers(0, 256, (rows, width)), dtype=mx.int32)
    forward = _seconds(lambda: mx.eval(model(tokens)))
    weights = [w for name, w in tree_flatten(model.parameters())
               if w.ndim == 2 and name.endswith("weight") and "norm" not in name and "lora" not in name
               and "embed" not in name]
    weights.append(model.model.embed_tokens.weight)  # tied or not, the output projection has this shape
    x = {w.shape[1]: mx.random.normal((rows * width, w.shape[1])) for w in weights}
    mx.eval(list(x.values()))
    matmul = sum(_seconds(lambda w=w: mx.eval(x[w.shape[1]] @ w.T)) for w in weights)
    flops = sum(2 * rows * width * w.shape[0] * w.shape[1] for w in weights)
    elements = 1 << 22
    a = mx.random.normal((elements,))
    mx.eval(a)
    mlx_exp = _seconds(lambda: mx.eval(mx.exp(a))) / elements
    # a JIT kernel, built for this CPU where lazarus.platform set that up (MLX compiles a lone op to its own
    # kernel, so the exp is fused with a scaling of its input)
    compiled = mx.compile(lambda t: mx.exp(t * 0.5))
    compiled_exp = _seconds(lambda: mx.eval(compiled(a))) / elements
    b = np.array(a)
    numpy_exp = _seconds(lambda: np.exp(b)) / elements
    return {"forward_s": forward, "matmul_s": matmul, "matmul_gflops": flops / matmul / 1e9,
            "mlx_exp_ns": mlx_exp * 1e9, "compiled_exp_ns": compiled_exp * 1e9, "numpy_exp_ns": numpy_exp * 1e9,
            "rows": rows, "width": width}


#: Steps of each run through the CLI in `overlap` (two of them warm-up).
OVERLAP_STEPS = 16
SAMPLINGS = {"T=1": (), "top-k 20, top-p 0.95": ("generation.top_k=20", "generation.top_p=0.95")}
PEERS_PYTHON = Path(__file__).resolve().parent.parent / ".venv-peers" / "bin" / "python"


def run_trl(python: Path, prepared: tuple[Path, Path, Path], steps: int, sampling: tuple[str, ...]) -> dict:
    """TRL's GRPOTrainer on the same files and settings, in the peers venv; its JSON summary."""
    work, data, model_dir = prepared
    knobs = dict(item.split("=", 1) for item in sampling)
    command = [str(python), str(Path(__file__).resolve().parent / "peers" / "trl_grpo.py"), "--model", str(model_dir),
               "--data", str(data), "--out", str(work / "trl"), "--steps", str(steps), "--prompts", str(PROMPTS),
               "--group", str(GROUP), "--new-tokens", str(NEW_TOKENS), "--lora-rank", str(LORA_RANK),
               "--top-k", knobs.get("generation.top_k", "0"), "--top-p", knobs.get("generation.top_p", "1.0")]
    offline = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}  # nothing to fetch
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **offline})
    lines = [line for line in done.stdout.splitlines() if line.startswith("{\"step_s\"")]
    if done.returncode or not lines:
        raise SystemExit(f"TRL peer failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])


def compare_with_trl(sizes: list[str], steps: int, python: Path) -> None:
    if not python.exists():
        raise SystemExit(f"no TRL peer venv at {python}: run `make bench-peers` (torch, TRL, transformers, peft)")
    spawn = multiprocessing.get_context("spawn")
    results = []
    for size in sizes:
        prepared = prepare(size, steps)
        for name, sampling in SAMPLINGS.items():
            print(f"\n-- {size}, {name}: Lazarus", flush=True)
            with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
                ours = pool.submit(run_size, size, steps, 0, sampling, prepared, False).result()
            print(f"-- {size}, {name}: TRL", flush=True)
            theirs = run_trl(python, prepared, steps, sampling)
            print(f"   TRL {theirs['trl']} (torch {theirs['torch']}, {theirs['threads']} threads): "
                  f"{theirs['step_s']:.3f} s/step, peak RSS {theirs['rss_gb']:.3f} GB", flush=True)
            print(f"-- {size}, {name}: Lazarus through the CLI, local and async (process launcher, k=1)", flush=True)
            ours.update(overlap(size, steps, sampling, prepared))
            results.append((size, name, ours, theirs))
    print(f"\nLazarus vs TRL GRPOTrainer, same model, data, reward and settings, this run (median of steps 2-{steps}; "
          f"lower ratio is better for Lazarus)")
    print(f"{'size':>6}  {'sampling':<22} {'lazarus s/step':>14} {'trl s/step':>10} {'ratio lazarus/trl':>17}  "
          f"{'lazarus RSS GB':>14} {'trl RSS GB':>10} {'ratio lazarus/trl':>17}")
    for size, name, ours, theirs in results:
        print(f"{size:>6}  {name:<22} {ours['step_s']:>14.3f} {theirs['step_s']:>10.3f} "
              f"{ours['step_s'] / theirs['step_s']:>17.2f}  {ours['rss_gb']:>14.3f} {theirs['rss_gb']:>10.3f} "
              f"{ours['rss_gb'] / theirs['rss_gb']:>17.2f}")
    for size, name, ours, theirs in results:
        print(f"ratio lazarus/trl {size} {name}: s/step {ours['step_s'] / theirs['step_s']:.2f}, "
              f"peak RSS {ours['rss_gb'] / theirs['rss_gb']:.2f}")
    for size, name, ours, theirs in results:
        ratio = ours['async_step_s'] / theirs['step_s']
        print(f"ratio lazarus/trl {size} {name} async k=1 (overlap): s/step {ratio:.2f} "
              f"({ours['async_step_s']:.3f} vs {theirs['step_s']:.3f}; local launcher through the CLI "
              f"{ours['sync_step_s']:.3f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="tiny,small", help="Comma-separated random-init llama sizes.")
    parser.add_argument("--steps", type=int, default=5, help="GRPO steps per size (step 1 is the warm-up).")
    parser.add_argument("--quick", action="store_true", help="Micro model, 2 steps (a smoke run).")
    parser.add_argument("--peer", choices=["trl"], help="Also run this peer on the same step, in this run.")
    parser.add_argument("--peer-python", type=Path, default=PEERS_PYTHON, help="Python of the peers venv.")
    parser.add_argument("--threads", type=int, help="BLAS/OpenMP threads for every process of the run (both "
                        "frameworks); on a machine shared with other work, 1 avoids threads waiting on each other")
    args = parser.parse_args()
    if args.threads:  # the measured processes are spawned after this, so they start with it
        for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[name] = str(args.threads)
    sizes = ["micro"] if args.quick else [s.strip() for s in args.sizes.split(",") if s.strip()]
    steps = 2 if args.quick else args.steps
    if args.peer == "trl":
        print(f"GRPO step, Lazarus vs TRL: {PROMPTS} prompts x {GROUP} completions x {NEW_TOKENS} new tokens, "
              f"LoRA r{LORA_RANK}, beta 0, float32, {steps} steps per size and sampling, "
              f"{args.threads or 'default'} threads", flush=True)
        compare_with_trl(sizes, steps, args.peer_python)
        return
    baseline_repeats = 1 if args.quick else 3
    print(f"GRPO step: {PROMPTS} prompts x {GROUP} completions x {NEW_TOKENS} new tokens, LoRA r{LORA_RANK}, "
          f"beta 0, {steps} steps per size (medians exclude step 1)", flush=True)

    summaries = []
    spawn = multiprocessing.get_context("spawn")
    for size in sizes:
        prepared = prepare(size, steps)
        with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:  # a fresh process: its own peak RSS
            summaries.append(pool.submit(run_size, size, steps, baseline_repeats, (), prepared).result())
        print(f"\n{size}: the same step through the CLI, local launcher vs async overlap", flush=True)
        summaries[-1].update(overlap(size, 2 if args.quick else steps, (), prepared, quick=args.quick))

    print("\nsummary (median over timed steps)")
    print(f"{'size':>6} {'step_s':>7} {'gen_s':>7} {'update_s':>8} {'peak RSS GB':>11} "
          f"{'batched tok/s':>13} {f'{PEER_BATCH}-at-a-time tok/s':>19} {'ratio':>6}")
    for s in summaries:
        ratio = s["batched_tok_s"] / s["peer_way_tok_s"]
        print(f"{s['size']:>6} {s['step_s']:>7.3f} {s['gen_s']:>7.3f} {s['update_s']:>8.3f} {s['rss_gb']:>11.3f} "
              f"{s['batched_tok_s']:>13.0f} {s['peer_way_tok_s']:>19.0f} {ratio:>6.2f}")
        for peer, (seconds, rss) in PEERS.get(s["size"], {}).items():
            print(f"{'':>6} {peer}: {seconds} s/step, {rss} GB peak RSS (reported, not measured in this run)")
    print("\nwhere the update's forward pass goes (same batch shape, same model, this process):")
    for s in summaries:
        print(f"{s['size']:>6} forward {s['forward_s'] * 1e3:.0f} ms on {s['rows']}x{s['width']} tokens; its matmuls "
              f"alone {s['matmul_s'] * 1e3:.0f} ms ({s['matmul_gflops']:.0f} GFLOP/s, "
              f"{s['matmul_s'] / s['forward_s']:.0%} of it); exp {s['mlx_exp_ns']:.1f} ns/element in MLX's "
              f"kernel, {s['compiled_exp_ns']:.1f} compiled (MLX's JIT), vs {s['numpy_exp_ns']:.1f} in NumPy "
              f"(ratios {s['mlx_exp_ns'] / s['numpy_exp_ns']:.1f}, {s['compiled_exp_ns'] / s['numpy_exp_ns']:.1f})")
    for s in summaries:
        print(f"async overlap (process launcher, max staleness 1) vs local launcher, {s['size']}: s/step "
              f"{s['async_step_s']:.3f} vs {s['sync_step_s']:.3f}, ratio {s['async_step_s'] / s['sync_step_s']:.2f} "
              f"(lower is better)")
    ratios = [s["batched_tok_s"] / s["peer_way_tok_s"] for s in summaries]
    print(f"ratio batched generation / {PEER_BATCH}-at-a-time generation, same engine: "
          + ", ".join(f"{s['size']} {r:.2f}" for s, r in zip(summaries, ratios)) + " (higher is better)")


if __name__ == "__main__":
    main()
