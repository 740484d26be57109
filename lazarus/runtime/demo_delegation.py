"""`lazarus demo delegation`: a tiny model learns, by multi-turn GRPO, to delegate aiming to an RNN expert.

The task is "what launch angle hits a target at D m with wind W m/s?" under drag (Projectile-v0): the
answer must land within `HIT_TOLERANCE` m of the target, which near the ground takes the launch angle right
to about 0.3 degrees. A ~1M-parameter language model fine-tuned on a few thousand true angles gets there on
about 60% of held-out problems; a GRU expert trained with PPO on Projectile-v0 on about 97%. Registered by
name and listed in `env.tools` as `{expert: NAME}`, the expert is the tool `expert_projectile`. The demo:

  1. trains the projectile expert (a few seconds to minutes) and registers it, unless the name already
     resolves to a Projectile-v0 expert;
  2. SFTs a random-init tiny model on a mix of demonstrations that delegate (the tool call, the expert's
     outcome as the tool message, then `Answer: ANGLE` copied from it) and that answer directly (the true
     angle, from `launch_angle_for`);
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
from lazarus.runtime.local import run_training

DELEGATE_SHARE = 0.35  # of SFT demonstrations that delegate to the expert; the rest answer directly
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
    arguments = {"target_distance": row["target_distance"], "wind": row["wind"]}
    return f'<tool_call>{json.dumps({"name": tool_name, "arguments": arguments})}</tool_call>'


def write_delegation_task(data_dir: Path, cfg: Config, seed: int, delegate_share: float = DELEGATE_SHARE,
                          n_train: int = N_TRAIN, n_eval: int = N_EVAL) -> None:
    """sft_train.jsonl (conversations), rl_train.jsonl and rl_eval.jsonl (prompt, target_distance, wind and
    the true low-angle `answer`), disjoint. Delegating demonstrations carry the tool message the expert's tool
    really returns (the same toolbox the episodes use), and answer with the angle it reports."""
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
    sft_rows = []
    for row in sft_part:
        user = {"role": "user", "content": row["prompt"]}
        if rng.random() < delegate_share:
            call = tool_call_text(tool_name, row)
            result = box.call(tool_name, {"target_distance": row["target_distance"], "wind": row["wind"]})
            angle = json.dumps(json.loads(result)["outcome"]["launch_angle_deg"])
            messages = [user, {"role": "assistant", "content": call}, {"role": "tool", "content": result},
                        {"role": "assistant", "content": f"Answer: {angle}"}]
        else:
            messages = [user, {"role": "assistant", "content": f"Answer: {row['answer']}"}]
        sft_rows.append({"messages": messages})
    write_jsonl(data_dir / "sft_train.jsonl", sft_rows)
    write_jsonl(data_dir / "rl_train.jsonl", rl_part)
    write_jsonl(data_dir / "rl_eval.jsonl", held_out)


def run_demo(cfg: Config, echo: Callable[[str], None] = print) -> dict:
    from lazarus.env.rewards import RewardFunction
    from lazarus.runtime.demo_tools import evaluate_episodes, report_gain

    if cfg.env.name != "tools":
        raise ConfigError("env.name: the delegation demo runs multi-turn tool episodes; set env.name=tools")
    run_root = Path(cfg.training.run_dir)
    t0 = time.perf_counter()
    ensure_expert(expert_entry(cfg), run_root, cfg.training.seed, echo)

    data_dir = Path(cfg.data.train).parent
    if not Path(cfg.data.train).exists():
        write_delegation_task(data_dir, cfg, cfg.training.seed)
    echo(f"[2/5] data: {data_dir} (aim a projectile under drag and wind; {DELEGATE_SHARE:.0%} of SFT "
         f"demonstrations delegate to the expert, the rest answer directly)")

    sft = cfg.model_copy(deep=True)
    sft.algorithm = "sft"
    sft.lora.enabled = False
    sft.env.name = None
    sft.data.train, sft.data.eval = str(data_dir / "sft_train.jsonl"), None
    sft.optim.learning_rate = cfg.demo.sft_learning_rate
    sft.optim.schedule, sft.optim.warmup_steps, sft.optim.min_lr_ratio = "cosine", 20, 0.1
    sft.training.max_steps, sft.training.batch_size = cfg.demo.sft_steps, cfg.demo.sft_batch_size
    sft.training.run_dir = str(run_root / "sft")
    echo(f"[3/5] SFT {sft.training.max_steps} steps from a random-init {cfg.model.init_arch or ''} model")
    run_training(sft, force=True)  # the demo owns its run directory: a rerun starts it over
    sft_model = str(run_root / "sft" / "model")

    reward = RewardFunction("hits_target", hits_target)
    held_out = [json.loads(line) for line in Path(cfg.data.eval).read_text().splitlines()][: cfg.eval.num_prompts]
    before = evaluate_episodes(sft_model, cfg, held_out, reward)
    echo(f"[4/5] held-out accuracy after SFT: {before['accuracy']:.3f} ({before['tool_call_rate']:.0%} of episodes "
         f"delegate to the expert); multi-turn GRPO {cfg.training.max_steps} steps")

    grpo = cfg.model_copy(deep=True)
    grpo.model.path, grpo.model.init_arch = sft_model, None
    grpo.lora.enabled = False
    grpo.data.eval = None  # the trainer's own eval is single-turn; the demo scores whole episodes below
    grpo.training.run_dir = str(run_root / "grpo")
    run_training(grpo, force=True)
    after = evaluate_episodes(str(run_root / "grpo" / "model"), cfg, held_out, reward)

    from lazarus.observe.plots import plot_run

    plots = plot_run(run_root / "sft") + plot_run(run_root / "grpo")
    echo(f"[5/5] held-out accuracy after GRPO: {after['accuracy']:.3f} ({after['tool_call_rate']:.0%} delegate, "
         f"{after['failed_calls']} failed calls); curves: {plots[-1].parent if plots else '-'} "
         f"({time.perf_counter() - t0:.0f}s in all)")
    report_gain(cfg, before, after, "delegation rate", echo)
    return {"accuracy_before": before["accuracy"], "accuracy_after": after["accuracy"],
            "delegation_rate_before": before["tool_call_rate"], "delegation_rate_after": after["tool_call_rate"],
            "plots": [str(p) for p in plots]}
