"""`lazarus demo tools`: a tiny model learns, by multi-turn GRPO, to call a calculator it was shown.

The task is multiplying two 3-digit numbers, which a ~1M-parameter model cannot do in its head. SFT mixes
demonstrations that call the tool (`<tool_call>{"name": "calculator", ...}</tool_call>`, the tool's
answer, then `Answer: N`) with demonstrations that answer directly; the fine-tuned model does both, and
is right almost only when it calls the tool. Multi-turn GRPO, rewarded only for the right final answer,
learns to call it: held-out greedy accuracy and the share of episodes that call the tool both go up.
The calculator runs in-process, or (`--set 'env.tools=[{mcp: "lazarus tools serve-mcp"}]'`) through the
MCP server Lazarus ships.
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path
from typing import Callable

from lazarus.config import Config, ConfigError
from lazarus.runtime.demo import DemoFailed
from lazarus.runtime.local import run_training

TOOL_SHARE = 0.4  # of SFT conversations that open with a calculator call (see write_tool_task)
N_TRAIN, N_EVAL = 8000, 200


def problem(rng: random.Random) -> tuple[str, str, str]:
    a, b = rng.randint(100, 999), rng.randint(100, 999)
    return f"What is {a} * {b}?", f"{a} * {b}", str(a * b)


def tool_call_text(expression: str) -> str:
    """A Hermes call of the calculator, as compact JSON (fewer tokens for the tiny model to learn to write)."""
    return '<tool_call>{"name":"calculator","arguments":{"expression":"' + expression + '"}}</tool_call>'


def write_tool_task(data_dir: Path, seed: int, tool_share: float = TOOL_SHARE, n_train: int = N_TRAIN,
                    n_eval: int = N_EVAL) -> None:
    """sft_train.jsonl (conversations), rl_train.jsonl and rl_eval.jsonl (prompt + answer), disjoint.

    The SFT demonstrations come in pairs, one calling the calculator and one answering directly, which
    SFT packs into one row (`data.pack`, max_length 160): half of them call the tool, and the first of a
    pair calls it with probability `tool_share`. The first is the one that matters: the models take no
    segment mask, so an example later in a row sees the earlier one, and the model learns how a
    conversation *opens* from the examples that open rows, as every held-out and RL prompt does. (Packed
    in random order, the long calling demonstrations would open most rows and the SFT model would always
    call; unpacked, ~70% of every batch would be padding.)
    """
    from lazarus.data.io import write_jsonl

    rng = random.Random(seed)
    seen, problems = set(), []
    while len(problems) < 2 * n_train + n_eval:
        p = problem(rng)
        if p[0] not in seen:
            seen.add(p[0])
            problems.append(p)
    held_out, sft_part, rl_part = problems[:n_eval], problems[n_eval:n_eval + n_train], problems[n_eval + n_train:]

    def calls(prompt, expression, answer):
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": tool_call_text(expression)},
                {"role": "tool", "content": answer}, {"role": "assistant", "content": f"Answer: {answer}"}]

    def answers(prompt, expression, answer):
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": f"Answer: {answer}"}]

    sft_rows = []
    for first, second in zip(sft_part[0::2], sft_part[1::2]):
        pair = (calls(*first), answers(*second)) if rng.random() < tool_share else (answers(*first), calls(*second))
        sft_rows += [{"messages": messages} for messages in pair]
    write_jsonl(data_dir / "sft_train.jsonl", sft_rows)
    write_jsonl(data_dir / "rl_train.jsonl", [{"prompt": p, "answer": a} for p, _, a in rl_part])
    write_jsonl(data_dir / "rl_eval.jsonl", [{"prompt": p, "answer": a} for p, _, a in held_out])


def evaluate_episodes(model_dir: str, cfg: Config, rows: list[dict], reward_function=None) -> dict:
    """Greedy multi-turn episodes on `rows`: accuracy (the mean of `reward_function`, by default `accuracy`
    against the rows' `answer`), the share that called a tool, failed calls."""
    from lazarus.data.tokenize import encode_prompt
    from lazarus.data.trajectory import RolloutTask, SamplingSettings
    from lazarus.env.build import env_factory, env_settings
    from lazarus.env.multiturn import run_episodes
    from lazarus.env.rewards import RewardFunction, accuracy_reward
    from lazarus.inference.engine import Engine
    from lazarus.inference.sampling import SamplingParams
    from lazarus.models.load import load

    model, tokenizer = load(model_dir)
    settings = env_settings(cfg.env.model_dump())
    task = RolloutTask("eval", [encode_prompt(r["prompt"], tokenizer) for r in rows], rows,
                       [f"eval:{i}" for i in range(len(rows))], 1, SamplingSettings(temperature=0.0),
                       cfg.generation.max_new_tokens, 0, env=cfg.env.model_dump())
    reward_function = reward_function or RewardFunction("accuracy", accuracy_reward)
    results = run_episodes(Engine(model, tokenizer, completion_batch_size=len(rows)), task,
                           [reward_function], env_factory(settings),
                           SamplingParams(temperature=0.0, max_tokens=cfg.generation.max_new_tokens),
                           max_turns=settings.max_turns, max_total_tokens=settings.max_total_tokens,
                           observation_max_tokens=settings.observation_max_tokens)
    n = max(len(results), 1)
    return {"accuracy": sum(r["components"][reward_function.name] for _, r in results) / n,
            "tool_call_rate": sum(e.tool_calls > 0 for e, _ in results) / n,
            "failed_calls": sum(sum(e.failures.values()) for e, _ in results),
            "example": results[0][0].final_text if results else ""}


def run_demo(cfg: Config, echo: Callable[[str], None] = print) -> dict:
    if cfg.env.name != "tools":
        raise ConfigError("env.name: the tools demo runs multi-turn tool episodes; set env.name=tools")
    run_root = Path(cfg.training.run_dir)
    t0 = time.perf_counter()
    data_dir = Path(cfg.data.train).parent
    if not Path(cfg.data.train).exists():
        write_tool_task(data_dir, cfg.training.seed)
    tools = ", ".join(t if isinstance(t, str) else f"mcp: {t.get('mcp')}" for t in cfg.env.tools)
    echo(f"[1/4] data: {data_dir} (3-digit multiplication; SFT pairs a demonstration that calls the calculator "
         f"with one that answers directly, and {TOOL_SHARE:.0%} of conversations open with the call); tools: {tools}")

    sft = cfg.model_copy(deep=True)
    sft.algorithm = "sft"
    sft.lora.enabled = False
    sft.env.name = None
    sft.data.train, sft.data.eval = str(data_dir / "sft_train.jsonl"), None
    sft.data.pack = True  # one pair of demonstrations a row (see write_tool_task)
    sft.optim.learning_rate = cfg.demo.sft_learning_rate
    sft.optim.schedule, sft.optim.warmup_steps, sft.optim.min_lr_ratio = "cosine", 20, 0.1
    sft.training.max_steps, sft.training.batch_size = cfg.demo.sft_steps, cfg.demo.sft_batch_size
    sft.training.run_dir = str(run_root / "sft")
    echo(f"[2/4] SFT {sft.training.max_steps} steps from a random-init {cfg.model.init_arch or ''} model")
    run_training(sft, force=True)  # the demo owns runs/demo_tools/sft: a rerun starts it over
    sft_model = str(run_root / "sft" / "model")

    held_out = [json.loads(line) for line in Path(cfg.data.eval).read_text().splitlines()][: cfg.eval.num_prompts]
    before = evaluate_episodes(sft_model, cfg, held_out)
    echo(f"[3/4] held-out accuracy after SFT: {before['accuracy']:.3f} ({before['tool_call_rate']:.0%} of episodes "
         f"call the calculator); multi-turn GRPO {cfg.training.max_steps} steps")

    grpo = cfg.model_copy(deep=True)
    grpo.model.path, grpo.model.init_arch = sft_model, None
    grpo.lora.enabled = False
    grpo.data.eval = None  # the trainer's own eval is single-turn; the demo scores whole episodes below
    grpo.training.run_dir = str(run_root / "grpo")
    run_training(grpo, force=True)
    after = evaluate_episodes(str(run_root / "grpo" / "model"), cfg, held_out)

    from lazarus.observe.plots import plot_run

    plots = plot_run(run_root / "sft") + plot_run(run_root / "grpo")
    echo(f"[4/4] held-out accuracy after GRPO: {after['accuracy']:.3f} ({after['tool_call_rate']:.0%} call the "
         f"calculator, {after['failed_calls']} failed calls); curves: {plots[-1].parent if plots else '-'} "
         f"({time.perf_counter() - t0:.0f}s in all)")
    report_gain(cfg, before, after, "tool-call rate", echo)
    return {"accuracy_before": before["accuracy"], "accuracy_after": after["accuracy"],
            "tool_call_rate_before": before["tool_call_rate"], "tool_call_rate_after": after["tool_call_rate"],
            "plots": [str(p) for p in plots]}


def report_gain(cfg: Config, before: dict, after: dict, rate_name: str, echo: Callable[[str], None]) -> None:
    """The demo's last two lines (held-out accuracy and the rate of episodes that call a tool, before and
    after GRPO); DemoFailed when the gain is below `demo.min_improvement`."""
    gain = after["accuracy"] - before["accuracy"]
    echo(f"held-out accuracy: after SFT {before['accuracy']:.3f} -> after GRPO {after['accuracy']:.3f} "
         f"({100 * gain:+.1f} points)")
    echo(f"{rate_name}: {before['tool_call_rate']:.3f} -> {after['tool_call_rate']:.3f}")
    sys.stdout.flush()
    if cfg.demo.min_improvement is not None and gain < cfg.demo.min_improvement:
        raise DemoFailed(f"GRPO improved held-out accuracy by {gain:+.3f}, less than "
                         f"demo.min_improvement={cfg.demo.min_improvement}")
