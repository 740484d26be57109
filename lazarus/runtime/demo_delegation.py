"""`lazarus demo delegation`: a tiny model learns, by multi-turn GRPO, to delegate aiming to an RNN expert.

The task is "what launch angle hits a target at D m with wind W m/s?" under drag (Projectile-v0): the
answer must land within `HIT_TOLERANCE` m of the target, which near the ground takes the launch angle right
to about 0.3 degrees. The demo's ~1M-parameter language model, after its SFT, gets there on under a third
of held-out problems; a GRU expert trained with PPO on Projectile-v0 almost always. Registered by
name and listed in `env.tools` as `{expert: NAME}`, the expert is the tool `expert_projectile`. The demo:

  1. trains the projectile expert (a few seconds to minutes) and registers it, unless the name already
     resolves to a Projectile-v0 expert;
  2. SFTs a random-init tiny model on packed pairs of demonstrations, one that delegates (the tool call,
     the expert's outcome as the tool message, then `Answer: ANGLE` copied from it) and one that answers
     directly (the true angle, from `launch_angle_for`);
  3. runs multi-turn GRPO rewarded only by `hits_target` (does the final answer's angle land within the
     tolerance?): held-out greedy accuracy and the share of episodes that delegate both go up.
"""

from __future__ import annotations

import json
import random
import re
import time
from pathlib import Path
from typing import Callable

from lazarus.config import Config, ConfigError

DELEGATE_SHARE = 0.35  # of SFT conversations that open with a delegation (see write_delegation_task)
N_TRAIN, N_EVAL = 4000, 200
HIT_TOLERANCE = 1.0  # metres: the projectile env's hit radius
EXPERT_ENV = "Projectile-v0"
_ANSWER = re.compile(r"Answer:\s*([-+]?\d+(?:\.\d+)?)")


def problem(rng: random.Random) -> dict:
    """A target 20-45 m away and a wind of -5..5 m/s, both to 0.1, as the prompt states them."""
    distance, wind = round(rng.uniform(20.0, 45.0), 1), round(rng.uniform(-5.0, 5.0), 1)
    return {"prompt": f"What launch angle hits a target at {distance} m with wind {wind} m/s?",
            "target_distance": distance, "wind": wind}


def hits_target(prompts, completions, target_distance, wind, **kwargs) -> list[float]:
    """1.0 where the completion's last `Answer: ANGLE` (degrees) lands within `HIT_TOLERANCE` m of the row's
    target under its wind (Projectile-v0's physics), else 0.0. TRL's reward signature."""
    from lazarus.env.rewards import completion_text
    from lazarus.experts.projectile import landing_distance

    scores = []
    for completion, distance, w in zip(completions, target_distance, wind):
        found = _ANSWER.findall(completion_text(completion))
        angle = float(found[-1]) if found else None
        hit = angle is not None and 5.0 <= angle <= 85.0 and abs(landing_distance(angle, w) - distance) <= HIT_TOLERANCE
        scores.append(1.0 if hit else 0.0)
    return scores


def expert_entry(cfg: Config) -> str:
    """The NAME_OR_DIR of the one `{expert: ...}` entry in `env.tools` (the demo's expert)."""
    entries = [t["expert"] for t in cfg.env.tools if isinstance(t, dict) and "expert" in t]
    if len(entries) != 1:
        raise ConfigError(f"env.tools: the delegation demo needs exactly one {{expert: NAME}} entry, found "
                          f"{len(entries)}")
    return entries[0]


def ensure_expert(name_or_dir: str, run_root: Path, seed: int, echo: Callable[[str], None]) -> str:
    """A Projectile-v0 expert under `name_or_dir`: the one it already names, else one trained here with PPO
    (into run_root/expert) and registered under that name (or written to that directory)."""
    from lazarus.experts.config import preset
    from lazarus.experts.ppo import train_to_directory
    from lazarus.experts.registry import NAME_PATTERN, ExpertNotFoundError, load_expert, register, resolve

    try:
        policy, meta = load_expert(name_or_dir)
    except ExpertNotFoundError:
        pass
    else:
        if policy.spec.env != EXPERT_ENV:
            raise ConfigError(f"env.tools: expert {name_or_dir!r} acts in {policy.spec.env}, the demo needs one for "
                              f"{EXPERT_ENV}")
        echo(f"[1/5] expert: {resolve(name_or_dir)} ({policy.spec.arch}, eval mean return "
             f"{meta.get('eval_return', float('nan')):.2f})")
        return str(resolve(name_or_dir))
    registered = NAME_PATTERN.match(name_or_dir) is not None and not Path(name_or_dir).exists()
    out = run_root / "expert" if registered else Path(name_or_dir)
    summary = train_to_directory(preset(EXPERT_ENV, arch="gru", seed=seed), out, log=lambda _: None)
    where = register(out, name_or_dir) if registered else out
    echo(f"[1/5] expert: trained a GRU on {EXPERT_ENV} with PPO in {summary['seconds']:.0f}s (eval mean return "
         f"{summary['eval_return']:.2f} after {summary['env_steps']} env steps); "
         f"{'registered as ' + str(where) if registered else 'wrote ' + str(where)}")
    return str(where)


def tool_call_text(tool_name: str, row: dict) -> str:
    """A Hermes call of the expert, as compact JSON (fewer tokens for the tiny model to learn to write)."""
    arguments = {"target_distance": row["target_distance"], "wind": row["wind"]}
    return f'<tool_call>{json.dumps({"name": tool_name, "arguments": arguments}, separators=(",", ":"))}</tool_call>'


def write_delegation_task(data_dir: Path, cfg: Config, seed: int, delegate_share: float = DELEGATE_SHARE,
                          n_train: int = N_TRAIN, n_eval: int = N_EVAL) -> None:
    """sft_train.jsonl (conversations), rl_train.jsonl and rl_eval.jsonl (prompt, target_distance, wind and
    the true low-angle `answer`), disjoint. Delegating demonstrations carry the tool message the expert's tool
    really returns (the same toolbox the episodes use), and answer with the angle it reports.

    As in the tools demo (`demo_tools.write_tool_task`), the demonstrations come in pairs, one delegating
    (~260 tokens) and one answering directly (~50), which SFT packs into one row (max_length 320); the first
    of a pair, the one that teaches how a conversation opens, delegates with probability `delegate_share`.
    Unpacked, a batch is padded to its longest (delegating) demonstration and half of it is padding."""
    from lazarus.data.io import write_jsonl
    from lazarus.env.build import env_settings, toolbox
    from lazarus.experts.projectile import launch_angle_for

    box = toolbox(env_settings(cfg.env.model_dump()))
    tool_name = next(name for name in box.tools if name.startswith("expert_"))
    rng = random.Random(seed)
    seen, rows = set(), []
    while len(rows) < 2 * n_train + n_eval:
        row = problem(rng)
        angle = launch_angle_for(row["target_distance"], row["wind"])
        if row["prompt"] not in seen and angle is not None:
            seen.add(row["prompt"])
            rows.append({**row, "answer": f"{angle:.1f}"})
    held_out, sft_part, rl_part = rows[:n_eval], rows[n_eval:n_eval + n_train], rows[n_eval + n_train:]

    def delegates(row):
        call = tool_call_text(tool_name, row)
        result = box.call(tool_name, {"target_distance": row["target_distance"], "wind": row["wind"]})
        angle = json.dumps(json.loads(result)["outcome"]["launch_angle_deg"])
        return [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": call},
                {"role": "tool", "content": result}, {"role": "assistant", "content": f"Answer: {angle}"}]

    def answers(row):
        return [{"role": "user", "content": row["prompt"]},
                {"role": "assistant", "content": f"Answer: {row['answer']}"}]

    sft_rows = []
    for first, second in zip(sft_part[0::2], sft_part[1::2]):
        opens_with_call = rng.random() < delegate_share
        pair = (delegates(first), answers(second)) if opens_with_call else (answers(first), delegates(second))
        sft_rows += [{"messages": messages} for messages in pair]
    write_jsonl(data_dir / "sft_train.jsonl", sft_rows)
    write_jsonl(data_dir / "rl_train.jsonl", rl_part)
    write_jsonl(data_dir / "rl_eval.jsonl", held_out)


def run_demo(cfg: Config, echo: Callable[[str], None] = print) -> dict:
    from lazarus.env.rewards import RewardFunction
    from lazarus.runtime.demo_multiturn import report_gain, sft_then_grpo

    if cfg.env.name != "tools":
        raise ConfigError("env.name: the delegation demo runs multi-turn tool episodes; set env.name=tools")
    run_root = Path(cfg.training.run_dir)
    t0 = time.perf_counter()
    ensure_expert(expert_entry(cfg), run_root, cfg.training.seed, echo)

    data_dir = Path(cfg.data.train).parent
    if not Path(cfg.data.train).exists():
        write_delegation_task(data_dir, cfg, cfg.training.seed)
    echo(f"[2/5] data: {data_dir} (aim a projectile under drag and wind; SFT pairs a demonstration that "
         f"delegates to the expert with one that answers directly, and {DELEGATE_SHARE:.0%} of conversations "
         f"open with the delegation)")

    reward = RewardFunction("hits_target", hits_target)
    before, after, plots = sft_then_grpo(cfg, data_dir / "sft_train.jsonl", "delegate to the expert", 3, 5, echo,
                                         reward)
    echo(f"[5/5] held-out accuracy after GRPO: {after['accuracy']:.3f} ({after['tool_call_rate']:.0%} delegate, "
         f"{after['failed_calls']} failed calls); curves: {plots[-1].parent if plots else '-'} "
         f"({time.perf_counter() - t0:.0f}s in all)")
    report_gain(cfg, before, after, "delegation rate", echo)
    return {"accuracy_before": before["accuracy"], "accuracy_after": after["accuracy"],
            "delegation_rate_before": before["tool_call_rate"], "delegation_rate_after": after["tool_call_rate"],
            "plots": [str(p) for p in plots]}
