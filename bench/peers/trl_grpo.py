"""TRL's GRPOTrainer on the same GRPO step as bench/grpo_step.py, for `grpo_step.py --peer trl`.

Runs in the separate peers venv (`make bench-peers`: torch on the CPU, TRL, transformers, peft), never in
the project's: it imports nothing of Lazarus. Same model directory (our random-init llama, which
transformers loads as a LlamaForCausalLM), same prompts (the `prompt` column through the same chat
template), same reward (the share of digits in the completion, plus a small length term), same
settings: 4 prompts x 8 completions x 32 new tokens (EOS cannot end a completion early), LoRA rank 8 /
alpha 16 on every linear layer, float32, beta 0, temperature 1, optional top-k / top-p. Prints one JSON
line: seconds per step (median of the steps after the first) and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time


def digit_share(prompts, completions, **_) -> list[float]:
    """grpo_step.py's reward: the share of digits in each completion's text plus 0.001 per 100 characters
    (conversational completions are message lists)."""
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [sum(ch.isdigit() for ch in t) / max(len(t), 1) + 1e-5 * len(t) for t in texts]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True, help="JSONL with a `prompt` column")
    parser.add_argument("--out", required=True, help="scratch directory for the trainer")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--lora-alpha", type=float, default=16.0)
    parser.add_argument("--learning-rate", type=float, default=1e-5)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--top-p", type=float, default=1.0)
    args = parser.parse_args()

    import torch
    import transformers
    import trl
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    rows = load_dataset("json", data_files=args.data, split="train")
    rows = rows.map(lambda r: {"prompt": [{"role": "user", "content": r["prompt"]}]})

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.seconds, self._start = [], 0.0

        def on_step_begin(self, *_, **__):
            self._start = time.perf_counter()

        def on_step_end(self, *_, **__):
            self.seconds.append(time.perf_counter() - self._start)
            print(f"trl step {len(self.seconds)}: {self.seconds[-1]:.3f} s", file=sys.stderr, flush=True)

    config = GRPOConfig(
        output_dir=args.out, use_cpu=True, bf16=False, report_to="none", save_strategy="no", logging_steps=1,
        max_steps=args.steps, learning_rate=args.learning_rate, per_device_train_batch_size=args.prompts * args.group,
        num_generations=args.group, steps_per_generation=1, num_iterations=1, max_completion_length=args.new_tokens,
        temperature=1.0, top_k=args.top_k, top_p=args.top_p, beta=0.0, seed=0, disable_tqdm=True,
        generation_kwargs={"min_new_tokens": args.new_tokens},  # full length, as ours with EOS disabled
    )
    lora = LoraConfig(r=args.lora_rank, lora_alpha=args.lora_alpha, lora_dropout=0.0, target_modules="all-linear",
                      task_type="CAUSAL_LM")
    times = StepTimes()
    trainer = GRPOTrainer(model=model, reward_funcs=digit_share, args=config, train_dataset=rows,
                          processing_class=tokenizer, peft_config=lora, callbacks=[times])
    trainer.train()
    timed = times.seconds[1:] or times.seconds
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"step_s": statistics.median(timed), "rss_gb": max_rss / 1e9, "steps": len(times.seconds),
                      "trl": trl.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
                      "threads": torch.get_num_threads()}), flush=True)


if __name__ == "__main__":
    main()
