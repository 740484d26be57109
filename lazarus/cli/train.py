"""`lazarus train sft|dpo|grpo|ppo`, `lazarus eval` and `lazarus demo`: thin calls into the runtime."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

train_app = typer.Typer(help="Train with SFT, DPO, GRPO (also RLOO, REINFORCE++) or PPO on this machine.",
                        no_args_is_help=True)


def _train(algorithm: str, config: Optional[Path], overrides: List[str], resume: Optional[Path]) -> None:
    from lazarus.config import load_config
    from lazarus.runtime.local import run_training

    cfg = load_config(config, overrides, algorithm=algorithm)
    result = run_training(cfg, resume=resume)
    run_dir = Path(cfg.training.run_dir)
    for key, value in result.items():
        typer.echo(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
    typer.echo(f"run directory: {run_dir} (metrics.jsonl, checkpoints/, {'adapter' if cfg.lora.enabled else 'model'}/)")


def _command(algorithm: str):
    def command(
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (configs/*.yaml)."),
        overrides: List[str] = typer.Option([], "--set", help="Override a field: section.key=value (repeatable)."),
        resume: Optional[Path] = typer.Option(None, "--resume", help="Checkpoint or run directory to resume from."),
    ):
        _train(algorithm, config, overrides, resume)

    command.__doc__ = f"Train with {algorithm.upper()} (config reference: `lazarus config show {algorithm}`)."
    return command


for _algorithm in ("sft", "dpo", "grpo", "ppo"):
    train_app.command(_algorithm)(_command(_algorithm))


def eval_command(
    model: Path = typer.Option(..., "--model", help="Model directory or .gguf file."),
    data: Path = typer.Option(..., "--data", help="Prompt JSONL (prompt + reward columns, e.g. answer)."),
    adapter: Optional[Path] = typer.Option(None, "--adapter", help="LoRA adapter directory."),
    reward: str = typer.Option("accuracy", "--reward", help="Reward function: built-in name or module:function."),
    num_prompts: int = typer.Option(200, "--num-prompts"),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens"),
    temperature: float = typer.Option(0.0, "--temperature"),
    no_chat_template: bool = typer.Option(False, "--no-chat-template"),
):
    """Accuracy (mean reward) of a model/adapter on a prompt set."""
    from lazarus.runtime.local import run_eval

    result = run_eval(str(model), str(adapter) if adapter else None, str(data), reward, num_prompts,
                      max_new_tokens, temperature, not no_chat_template)
    typer.echo(f"{reward}: {result['mean_reward']:.4f} over {result['n']} prompts")


def demo_command(
    config: Path = typer.Option(Path("configs/demo_math.yaml"), "--config", "-c"),
    overrides: List[str] = typer.Option([], "--set", help="Override a field: section.key=value (repeatable)."),
):
    """Init a tiny model, SFT it on generated arithmetic, then GRPO; prints held-out accuracy before/after.

    Exits 1 when GRPO adds less held-out accuracy than `demo.min_improvement`."""
    from lazarus.config import load_config
    from lazarus.runtime.demo import DemoFailed, run_demo

    try:
        result = run_demo(load_config(config, overrides, algorithm="grpo"), echo=typer.echo)
    except DemoFailed as e:
        typer.echo(f"demo: {e}", err=True)
        raise typer.Exit(1)
    typer.echo(f"held-out accuracy: after SFT {result['accuracy_before']:.3f} -> after GRPO "
               f"{result['accuracy_after']:.3f} "
               f"({100 * (result['accuracy_after'] - result['accuracy_before']):+.1f} points)")


def register(app: typer.Typer) -> None:
    app.add_typer(train_app, name="train")
    app.command("eval")(eval_command)
    app.command("demo")(demo_command)
