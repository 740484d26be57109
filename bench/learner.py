"""GRPO learner update throughput: tokens/s of `RLTrainer.learn` and its GFLOP/s against a float32 matmul.

For each model size, one batch of trajectories (4 prompts x 8 completions x 32 new tokens, EOS disabled so
every completion is full length) is sampled with the local actor's `run_task`; then the learner's `learn` (the compiled
step: forward, backward, clip, AdamW) is timed on that batch after a warm-up call that compiles it.
Two rows per size: LoRA rank 8 and full fine-tuning, both GRPO with beta 0 (no reference forward).

FLOPs per update are estimated from N (all parameters; embeddings are tied, so the table is also the
output-head matmul) and T (the tokens the update runs: each group's prompt once, as the learner shares it
with the group's completions, plus every completion; tok/s counts every trajectory's prompt + completion):
    full fine-tuning  6 * N * T   (forward 2NT + input-gradient 2NT + weight-gradient 2NT)
    LoRA              4 * N * T   (forward + input-gradient; frozen weights get no weight-gradient)
Attention score FLOPs and padding are left out, so the GFLOP/s is a lower bound on the work done.
The ratio printed is achieved GFLOP/s / MLX float32 1024x1024 matmul GFLOP/s (bench/blas.py), the matmul
probed right after every timed update so that load from other processes hits both alike; the ratio is
the median of the per-update ratios. Higher is better; 1.0 would be the matmul's speed.

Prompt sharing: on the last size, the LoRA update as the learner runs it (each group's prompt once, its
completions against the prompt's keys and values) against the same update on whole rows, alternated in one
process; it prints their time ratio (lower is better). The same for PPO's update (policy and value head on one
trunk pass, rl.beta 0), and for a DPO step (a pair's chosen and rejected completions run their prompt once).

Memory: the peak MLX memory of the timed updates (`mx.get_peak_memory`, reset before each) above what was
allocated before it (weights, optimizer state), divided by T: peak KB per token. The update's share that
grows with T x vocabulary is what `lazarus.models.forward.policy_token_logprobs` bounds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lazarus  # noqa: F401  (OpenBLAS before mlx.core)

# isort: split
import mlx.core as mx
from mlx.utils import tree_flatten

sys.path.insert(0, str(Path(__file__).resolve().parent))
from blas import matmul_gflops
from generation import eos_disabled

from lazarus.config import load_config
from lazarus.data.math import write_math_dataset
from lazarus.models.load import num_parameters
from lazarus.models.tiny import init_model
from lazarus.runtime.local import local_roles

PROMPTS, GROUP, NEW_TOKENS, LORA_RANK = 4, 8, 32, 8


def grpo_config(model_dir: Path, data_dir: Path, run_dir: Path, lora: bool, algorithm: str = "grpo"):
    return load_config(None, [
        f"algorithm={algorithm}", f"model.path={model_dir}", f"data.train={data_dir}/rl_train.jsonl",
        f"training.run_dir={run_dir}", "training.progress=false", f"training.batch_size={PROMPTS}",
        f"generation.num_generations={GROUP}", f"generation.max_new_tokens={NEW_TOKENS}",
        "generation.temperature=1.0", "rl.beta=0", f"lora.enabled={str(lora).lower()}", f"lora.rank={LORA_RANK}"])


def on_policy(trajectories, learner) -> None:
    """Tag the batch with the learner's current version, so every timed update is an on-policy one."""
    for t in trajectories:
        t.policy_version = t.policy_version_end = learner.policy_version


def rolled_out(model_dir: Path, data_dir: Path, run_dir: Path, lora: bool, algorithm: str = "grpo"):
    """A fresh learner and one batch of full-length trajectories from its local actor, rewards varying in groups."""
    trainer, actor, tasks = local_roles(grpo_config(model_dir, data_dir, run_dir, lora, algorithm))
    trainer.seed_step()
    with eos_disabled(trainer.tokenizer):
        trajectories = actor.run_task(tasks.next_task(PROMPTS, trainer.policy_version))
    for i, t in enumerate(trajectories):  # a random-init model scores all alike, and `learn` would skip the update
        t.reward = float(i % 2)
    return trainer, trajectories


def shared_prompts_vs_whole_rows(model_dir: Path, data_dir: Path, run_dir: Path, repeats: int,
                                 algorithm: str = "grpo") -> dict:
    """Seconds per LoRA `learn()` on one batch, running each group's prompt once and running whole rows,
    alternated so that load from other processes hits both alike (medians, after a compiling warm-up each).
    PPO's `learn` also runs the value head, on the same hidden states, and its values before the update."""
    trainer, trajectories = rolled_out(model_dir, data_dir, run_dir, lora=True, algorithm=algorithm)
    seconds = {True: [], False: []}
    for repeat in range(repeats + 1):
        for shared in (True, False):
            trainer.share_prefix = shared
            on_policy(trajectories, trainer)
            start = time.perf_counter()
            trainer.learn(trajectories)
            if repeat:
                seconds[shared].append(time.perf_counter() - start)
    return {"shared_s": statistics.median(seconds[True]), "whole_s": statistics.median(seconds[False])}


def dpo_shared_prompts_vs_whole_rows(model_dir: Path, data_dir: Path, run_dir: Path, repeats: int) -> dict:
    """Seconds per DPO LoRA step (reference pass, forward and backward, AdamW) on 8 preference pairs, running
    each pair's prompt once for its chosen and rejected completions and running whole rows, alternated
    (medians, after a compiling warm-up each)."""
    from lazarus.runtime.build import build_trainer

    cfg = load_config(None, ["algorithm=dpo", f"model.path={model_dir}",
                             f"data.train={data_dir}/preference_train.jsonl", "data.eval=null",
                             f"training.run_dir={run_dir}", "training.progress=false", "training.batch_size=8",
                             "lora.enabled=true", f"lora.rank={LORA_RANK}"])
    trainer = build_trainer(cfg)
    pairs, running = trainer.pairs[:8], mx.array([0.0, 0.0])
    seconds = {True: [], False: []}
    for repeat in range(repeats + 1):
        for shared in (True, False):
            trainer.share_prompts = shared
            start = time.perf_counter()
            batch = trainer.collate(pairs)
            trainer.stepper.accumulate(*batch[:3], trainer.reference_logprobs(batch), running, batch.prefix)
            trainer.stepper.apply()
            if repeat:
                seconds[shared].append(time.perf_counter() - start)
    return {"shared_s": statistics.median(seconds[True]), "whole_s": statistics.median(seconds[False]),
            "prompt_tokens": statistics.mean(len(p.prompt_ids) for p in pairs),
            "completion_tokens": statistics.mean(len(c) for p in pairs for c in (p.chosen_ids, p.rejected_ids))}


def tokens_run(trajectories, shared_prompts: bool) -> int:
    """Tokens the update's forward pass runs: every row whole, or each group's prompt once when shared."""
    if not shared_prompts:
        return sum(len(t.prompt_ids) + len(t.completion_ids) - 1 for t in trajectories)
    prompts = {t.group_id: len(t.prompt_ids) - 1 for t in trajectories}
    return sum(prompts.values()) + sum(len(t.completion_ids) for t in trajectories)


def measure_learner(model_dir: Path, data_dir: Path, run_dir: Path, lora: bool, repeats: int,
                    matmul_repeats: int) -> dict:
    """Seconds per `learn()` on one rolled-out batch and its GFLOP/s over the matmul's, each timed
    update followed by a matmul probe (medians of `repeats`, after one compiling warm-up)."""
    trainer, trajectories = rolled_out(model_dir, data_dir, run_dir, lora)
    tokens = sum(len(t.prompt_ids) + len(t.completion_ids) for t in trajectories)
    run = tokens_run(trajectories, trainer.share_prefix)
    on_policy(trajectories, trainer)
    trainer.learn(trajectories)  # warm-up: compiles the step
    params = num_parameters(trainer.model)
    per_update = (4 if lora else 6) * params * run
    seconds, matmul, ratios, peaks = [], [], [], []
    for _ in range(repeats):  # a matmul probe after every update, so load from other processes hits both alike
        mx.clear_cache()
        resident = mx.get_active_memory()
        mx.reset_peak_memory()
        on_policy(trajectories, trainer)  # the same batch each time, as if sampled at the current version
        start = time.perf_counter()
        trainer.learn(trajectories)
        seconds.append(time.perf_counter() - start)
        peaks.append(mx.get_peak_memory() - resident)
        matmul.append(matmul_gflops(1024, matmul_repeats)["mlx_gflops"])
        ratios.append(per_update / seconds[-1] / 1e9 / matmul[-1])
    trainable = sum(v.size for _, v in tree_flatten(trainer.model.trainable_parameters()))
    s = statistics.median(seconds)
    return {"params": params, "trainable": trainable, "tokens": tokens, "tokens_run": run, "seconds": s,
            "tokens_per_s": tokens / s, "flops": per_update, "gflops": per_update / s / 1e9,
            "matmul_gflops": statistics.median(matmul), "ratio": statistics.median(ratios),
            "peak_mb": max(peaks) / 1e6, "peak_kb_per_token": max(peaks) / tokens / 1e3}


def logprob_memory(model_dir: Path, rows: int, length: int) -> dict:
    """Peak MB of value-and-grad of the summed policy log-probs (LoRA), full logits vs chunked, same batch."""
    from mlx import nn

    from lazarus.algorithms.logprobs import token_logprobs
    from lazarus.models.forward import policy_token_logprobs
    from lazarus.models.load import load
    from lazarus.models.lora import apply_lora

    model, _ = load(model_dir)
    apply_lora(model, rank=LORA_RANK)
    inputs = mx.random.randint(0, model.args.vocab_size, (rows, length), key=mx.random.key(0))
    targets = mx.random.randint(0, model.args.vocab_size, (rows, length), key=mx.random.key(1))
    losses = {"full": lambda: token_logprobs(model(inputs), targets).sum(),
              "chunked": lambda: policy_token_logprobs(model, inputs, targets)[0].sum()}
    peaks = {}
    for name, loss in losses.items():
        step = nn.value_and_grad(model, loss)
        mx.clear_cache()
        resident = mx.get_active_memory()
        mx.reset_peak_memory()
        mx.eval(step())
        peaks[name] = (mx.get_peak_memory() - resident) / 1e6
    return peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="tiny,small", help="Comma-separated random-init llama sizes.")
    parser.add_argument("--repeats", type=int, default=5, help="Timed learn() calls per row (median reported).")
    parser.add_argument("--quick", action="store_true", help="Micro model, 1 repeat (a smoke run).")
    args = parser.parse_args()
    sizes = ["micro"] if args.quick else [s.strip() for s in args.sizes.split(",") if s.strip()]
    repeats = 1 if args.quick else args.repeats

    work = Path(tempfile.mkdtemp(prefix="lazarus-bench-learner-"))
    write_math_dataset(work / "data", n_train=PROMPTS * 4, n_eval=0, kinds=["arithmetic"], seed=0)
    matmul_repeats = 3 if args.quick else 10
    print(f"GRPO learner update, {PROMPTS} prompts x {GROUP} completions x {NEW_TOKENS} new tokens, beta 0, "
          f"float32, {mx.default_device()}, median of {repeats}")
    print("FLOPs per update: full FT 6*N*T, LoRA 4*N*T (N = all params, T = tokens run: each group's prompt "
          "once, plus the completions)")
    print("matmul = MLX float32 1024x1024 GFLOP/s (bench/blas.py), probed after each timed update in this run")
    print(f"{'size':>6} {'mode':>8} {'params':>8} {'trainable':>9} {'tokens':>6} {'T':>5} {'s/update':>9} "
          f"{'tok/s':>8} {'GFLOP/upd':>9} {'GFLOP/s':>8} {'matmul':>7} {'ratio':>6} {'peak MB':>8} {'KB/tok':>7}")
    ratios = []
    for size in sizes:
        model_dir = init_model("llama", size, work / f"llama-{size}", seed=0)
        for lora in (True, False):
            mode = f"lora-r{LORA_RANK}" if lora else "full"
            r = measure_learner(model_dir, work / "data", work / f"run-{size}-{mode}", lora, repeats, matmul_repeats)
            ratios.append(r["ratio"])
            print(f"{size:>6} {mode:>8} {r['params'] / 1e6:>7.2f}M {r['trainable'] / 1e6:>8.3f}M {r['tokens']:>6} "
                  f"{r['tokens_run']:>5} {r['seconds']:>9.3f} {r['tokens_per_s']:>8.0f} {r['flops'] / 1e9:>9.2f} "
                  f"{r['gflops']:>8.2f} {r['matmul_gflops']:>7.1f} {r['ratio']:>6.3f} {r['peak_mb']:>8.1f} "
                  f"{r['peak_kb_per_token']:>7.1f}")
    print(f"ratio learner GFLOP/s / matmul GFLOP/s: min {min(ratios):.3f}, max {max(ratios):.3f} "
          "(estimated FLOPs; higher is better)")
    size = sizes[-1]
    r = shared_prompts_vs_whole_rows(work / f"llama-{size}", work / "data", work / f"run-{size}-shared", repeats)
    print(f"LoRA update running each group's prompt once vs whole rows, {size}: {r['shared_s']:.3f} vs "
          f"{r['whole_s']:.3f} s/update, time ratio {r['shared_s'] / r['whole_s']:.2f} (lower is better)")
    r = shared_prompts_vs_whole_rows(work / f"llama-{size}", work / "data", work / f"run-{size}-ppo", repeats, "ppo")
    print(f"PPO LoRA update (with its value head) running each group's prompt once vs whole rows, {size}: "
          f"{r['shared_s']:.3f} vs {r['whole_s']:.3f} s/update, time ratio {r['shared_s'] / r['whole_s']:.2f} "
          "(lower is better)")
    r = dpo_shared_prompts_vs_whole_rows(work / f"llama-{size}", work / "data", work / f"run-{size}-dpo", repeats)
    print(f"DPO LoRA step running each pair's prompt once vs whole rows, {size}, 8 pairs "
          f"({r['prompt_tokens']:.0f}-token prompts, {r['completion_tokens']:.0f}-token completions): "
          f"{r['shared_s']:.3f} vs {r['whole_s']:.3f} s/step, time ratio {r['shared_s'] / r['whole_s']:.2f} "
          "(lower is better)")
    rows, length = PROMPTS * GROUP, 128
    peaks = logprob_memory(work / f"llama-{sizes[-1]}", rows, length)
    print(f"policy log-probs value-and-grad, {sizes[-1]}, {rows} x {length} tokens: peak {peaks['full']:.1f} MB "
          f"with full logits, {peaks['chunked']:.1f} MB chunked "
          f"(ratio {peaks['chunked'] / peaks['full']:.2f}, lower is better)")


if __name__ == "__main__":
    main()
