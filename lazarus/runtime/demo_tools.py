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

import random
import time
from pathlib import Path
from typing import Callable

from lazarus.config import Config, ConfigError
from lazarus.runtime.demo_multiturn import report_gain, sft_then_grpo

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


def run_demo(cfg: Config, echo: Callable[[str], None] = print) -> dict:
    if cfg.env.name != "tools":
        raise ConfigError("env.name: the tools demo runs multi-turn tool episodes; set env.name=tools")
    t0 = time.perf_counter()
    data_dir = Path(cfg.data.train).parent
    if not Path(cfg.data.train).exists():
        write_tool_task(data_dir, cfg.training.seed)
    tools = ", ".join(t if isinstance(t, str) else f"mcp: {t.get('mcp')}" for t in cfg.env.tools)
    echo(f"[1/4] data: {data_dir} (3-digit multiplication; SFT pairs a demonstration that calls the calculator "
         f"with one that answers directly, and {TOOL_SHARE:.0%} of conversations open with the call); tools: {tools}")

    before, after, plots = sft_then_grpo(cfg, data_dir / "sft_train.jsonl", "call the calculator", 2, 4, echo)
    echo(f"[4/4] held-out accuracy after GRPO: {after['accuracy']:.3f} ({after['tool_call_rate']:.0%} call the "
         f"calculator, {after['failed_calls']} failed calls); curves: {plots[-1].parent if plots else '-'} "
         f"({time.perf_counter() - t0:.0f}s in all)")
    report_gain(cfg, before, after, "tool-call rate", echo)
    return {"accuracy_before": before["accuracy"], "accuracy_after": after["accuracy"],
            "tool_call_rate_before": before["tool_call_rate"], "tool_call_rate_after": after["tool_call_rate"],
            "plots": [str(p) for p in plots]}

