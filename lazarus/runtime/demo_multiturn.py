"""What the multi-turn tool demos (`lazarus demo tools`, `lazarus demo delegation`) share: SFT a random-init
model on packed demonstrations, score greedy multi-turn episodes on held-out problems, multi-turn GRPO,
score again, and report the gain in held-out accuracy and in the share of episodes that call a tool."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable

from lazarus.config import Config
from lazarus.runtime.demo import DemoFailed
from lazarus.runtime.local import run_training


def sft_then_grpo(cfg: Config, sft_train: Path, calls: str, step: int, steps: int, echo: Callable[[str], None],
                  reward_function=None) -> tuple[dict, dict, list[Path]]:
    """SFT from `cfg.model` on `sft_train` (packed rows of `data.max_length`; `demo.sft_*`), then multi-turn
    GRPO as `cfg` says, each into `training.run_dir`/sft|grpo (started over). Returns the held-out episode
    scores after SFT and after GRPO (`evaluate_episodes`) and the curves. `calls` says what a tool-calling
    episode does ("call the calculator"); the progress lines are numbered from `step` of `steps`."""
    run_root = Path(cfg.training.run_dir)
    sft = cfg.model_copy(deep=True)
    sft.algorithm = "sft"
    sft.lora.enabled = False
    sft.env.name = None
    sft.data.train, sft.data.eval = str(sft_train), None
    sft.data.pack = True  # the demos write their demonstrations in pairs meant to share a row
    sft.optim.learning_rate = cfg.demo.sft_learning_rate
    sft.optim.schedule, sft.optim.warmup_steps, sft.optim.min_lr_ratio = "cosine", 20, 0.1
    sft.training.max_steps, sft.training.batch_size = cfg.demo.sft_steps, cfg.demo.sft_batch_size
    sft.training.run_dir = str(run_root / "sft")
    echo(f"[{step}/{steps}] SFT {sft.training.max_steps} steps from a random-init {cfg.model.init_arch or ''} model")
    run_training(sft, force=True)  # the demo owns its run directory: a rerun starts it over
    sft_model = str(run_root / "sft" / "model")

    held_out = [json.loads(line) for line in Path(cfg.data.eval).read_text().splitlines()][: cfg.eval.num_prompts]
    before = evaluate_episodes(sft_model, cfg, held_out, reward_function)
    echo(f"[{step + 1}/{steps}] held-out accuracy after SFT: {before['accuracy']:.3f} ({before['tool_call_rate']:.0%} "
         f"of episodes {calls}); multi-turn GRPO {cfg.training.max_steps} steps")

    grpo = cfg.model_copy(deep=True)
    grpo.model.path, grpo.model.init_arch = sft_model, None
    grpo.lora.enabled = False
    grpo.data.eval = None  # the trainer's own eval is single-turn; the demo scores whole episodes below
    grpo.training.run_dir = str(run_root / "grpo")
    run_training(grpo, force=True)
    after = evaluate_episodes(str(run_root / "grpo" / "model"), cfg, held_out, reward_function)

    from lazarus.observe.plots import plot_run

    return before, after, plot_run(run_root / "sft") + plot_run(run_root / "grpo")


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
