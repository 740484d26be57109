"""`lazarus demo`: init a tiny model, SFT it on generated arithmetic, then GRPO; held-out accuracy before
and after GRPO, and the curves as PNG. Everything runs in this process on the config's defaults.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from lazarus.config import Config
from lazarus.runtime.local import ensure_data, run_eval, run_training


def demo_config_path(name: str) -> Path:
    """configs/demo_NAME.yaml from the working directory if there, else the one shipped with Lazarus."""
    local = Path("configs") / f"demo_{name}.yaml"
    if local.is_file():
        return local
    shipped = Path(__file__).resolve().parents[2] / "configs" / f"demo_{name}.yaml"
    return shipped if shipped.is_file() else local


def run_demo(cfg: Config, echo: Callable[[str], None] = print) -> dict:
    run_root = Path(cfg.training.run_dir)
    t0 = time.perf_counter()
    ensure_data(cfg)
    data_dir = Path(cfg.data.train).parent
    echo(f"[1/4] data: {data_dir} (generated arithmetic, held-out split)")

    sft = cfg.model_copy(deep=True)
    sft.algorithm = "sft"
    sft.lora.enabled = False
    sft.data.train, sft.data.eval = str(data_dir / "sft_train.jsonl"), str(data_dir / "sft_eval.jsonl")
    sft.optim.learning_rate = cfg.demo.sft_learning_rate
    sft.optim.schedule, sft.optim.warmup_steps, sft.optim.min_lr_ratio = "cosine", 20, 0.1
    sft.training.max_steps, sft.training.batch_size = cfg.demo.sft_steps, cfg.demo.sft_batch_size
    sft.training.run_dir = str(run_root / "sft")
    echo(f"[2/4] SFT {sft.training.max_steps} steps from a random-init {cfg.model.init_arch or ''} model")
    run_training(sft, force=True)  # the demo owns runs/demo/sft: a rerun starts it over
    sft_model = str(run_root / "sft" / "model")

    evaluate = lambda adapter=None, model=sft_model: run_eval(  # noqa: E731
        model, adapter, cfg.data.eval, cfg.eval.reward, cfg.eval.num_prompts,
        cfg.eval.max_new_tokens or cfg.generation.max_new_tokens, cfg.eval.temperature,
        cfg.data.use_chat_template)
    sft_eval = evaluate()
    before, work_before = sft_eval["mean_reward"], shows_work(sft_eval["completions"])
    echo(f"[3/4] held-out accuracy after SFT: {before:.3f} ({work_before:.0%} of answers show their work); "
         f"GRPO {cfg.training.max_steps} steps")

    grpo = cfg.model_copy(deep=True)
    grpo.model.path, grpo.model.init_arch = sft_model, None
    grpo.training.run_dir = str(run_root / "grpo")
    run_training(grpo, force=True)
    grpo_eval = evaluate(str(run_root / "grpo" / "adapter")) if grpo.lora.enabled else evaluate(
        model=str(run_root / "grpo" / "model"))
    after, work_after = grpo_eval["mean_reward"], shows_work(grpo_eval["completions"])

    from lazarus.observe.plots import plot_run

    plots = plot_run(run_root / "sft") + plot_run(run_root / "grpo")
    echo(f"[4/4] held-out accuracy after GRPO: {after:.3f} ({work_after:.0%} show their work); "
         f"curves: {plots[-1].parent} ({time.perf_counter() - t0:.0f}s in all)")
    result = {"accuracy_before": before, "accuracy_after": after, "plots": [str(p) for p in plots],
              "shows_work_before": work_before, "shows_work_after": work_after}
    echo(f"held-out accuracy: after SFT {before:.3f} -> after GRPO {after:.3f} ({100 * (after - before):+.1f} points)")
    if cfg.demo.min_improvement is not None and after - before < cfg.demo.min_improvement:
        raise DemoFailed(f"GRPO improved held-out accuracy by {after - before:+.3f}, "
                         f"less than demo.min_improvement={cfg.demo.min_improvement}")
    return result


def shows_work(completions: list[str]) -> float:
    """Fraction of completions that write steps before the final `Answer:` line."""
    return sum(not c.lstrip().startswith("Answer:") for c in completions) / max(len(completions), 1)


class DemoFailed(RuntimeError):
    """The demo ran but did not reach its target (exit 1, not a user error)."""
