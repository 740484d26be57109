"""`lazarus`: the command line. Each command is a thin call into runtime, training, models, inference.

Errors a user can fix (bad config, dataset row, model path, adapter) print one line and exit 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

import lazarus  # noqa: F401  (OpenBLAS before mlx.core)
from lazarus.errors import LazarusError

app = typer.Typer(
    name="lazarus",
    help="RL post-training (SFT, DPO, GRPO, PPO) for language models on MLX.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Inspect configuration schemas and files.", no_args_is_help=True)
app.add_typer(config_app, name="config")


class UsageError(LazarusError):
    """Raised by commands for a user-facing error that needs no traceback."""


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that the CLI reports as one line (exit code 2): every `LazarusError`."""
    return (LazarusError, FileNotFoundError)


@app.command("init-model")
def init_model(
    out: Path = typer.Option(..., "--out", help="Directory to write (must not exist or be empty, unless --force)."),
    arch: str = typer.Option("llama", "--arch", help="llama, mistral, gemma, starcoder2, granite, qwen2, lazyfox"),
    size: str = typer.Option("tiny", "--size", help="micro (~0.1M), tiny (~1M) or small (~10M) parameters"),
    seed: int = typer.Option(0, "--seed"),
    force: bool = typer.Option(False, "--force", help="Replace an existing file or non-empty directory at --out."),
):
    """Write a random-init HF-format model plus a byte-level BPE tokenizer (loadable by mlx_lm.load)."""
    from lazarus.models.load import load, num_parameters
    from lazarus.models.tiny import init_model as _init

    if not force and (out.is_file() or out.is_symlink() or (out.is_dir() and any(out.iterdir()))):
        what = "a non-empty directory" if out.is_dir() else "a file"
        raise UsageError(f"--out {out}: is {what}; refusing to replace it (pass --force to replace it)")
    try:
        path = _init(arch, size, out, seed=seed)
    except ValueError as e:
        raise UsageError(str(e)) from None
    model, _ = load(path)
    typer.echo(f"wrote {path} ({arch}, {size}, {num_parameters(model) / 1e6:.2f}M parameters)")


@app.command()
def infer(
    model: Path = typer.Option(..., "--model", help="Model directory or .gguf file."),
    prompt: str = typer.Option(..., "--prompt", help="Prompt text."),
    adapter: Optional[Path] = typer.Option(None, "--adapter", help="LoRA adapter directory (mlx-lm format)."),
    chat: bool = typer.Option(False, "--chat", help="Wrap the prompt in the tokenizer's chat template."),
    system: Optional[str] = typer.Option(None, "--system", help="System message (with --chat)."),
    max_tokens: int = typer.Option(128, "--max-tokens"),
    temperature: float = typer.Option(0.0, "--temperature", help="0 = greedy."),
    top_p: float = typer.Option(1.0, "--top-p"),
    top_k: int = typer.Option(0, "--top-k"),
    min_p: float = typer.Option(0.0, "--min-p"),
    stop: List[str] = typer.Option([], "--stop", help="Stop string (repeatable)."),
    seed: Optional[int] = typer.Option(None, "--seed"),
):
    """Generate from a model, streaming tokens as they come."""
    from lazarus.inference.engine import Engine, chat_prompt_ids
    from lazarus.inference.sampling import SamplingParams
    from lazarus.models.load import load

    try:
        params = SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
                                max_tokens=max_tokens, stop=list(stop), seed=seed)
    except ValueError as e:
        raise UsageError(str(e)) from None
    policy, tokenizer = load(model, adapter=adapter)
    engine = Engine(policy, tokenizer)
    ids = chat_prompt_ids(tokenizer, prompt, chat=chat, system=system)
    if not chat:
        typer.echo(prompt, nl=False)
    for event in engine.stream(ids, params):
        sys.stdout.write(event.text)
        sys.stdout.flush()
    sys.stdout.write("\n")


@config_app.command("show")
def config_show(
    algorithm: Optional[str] = typer.Argument(None, help="sft, dpo, grpo or ppo: mark the sections it reads."),
):
    """Print every config field with its type, default and description (the reference)."""
    from rich.console import Console
    from rich.table import Table

    from lazarus.config import describe

    relevant = {
        "sft": {"algorithm", "model", "lora", "data", "optim", "training", "eval"},
        "dpo": {"algorithm", "model", "lora", "data", "optim", "training", "dpo"},
        "grpo": {"algorithm", "model", "lora", "data", "optim", "training", "generation", "rl", "eval", "env",
                 "runtime"},
        "ppo": {"algorithm", "model", "lora", "data", "optim", "training", "generation", "rl", "eval", "env",
                "runtime"},
        "rm": {"algorithm", "model", "lora", "data", "optim", "training", "rm"},
    }
    if algorithm is not None and algorithm not in relevant:
        raise UsageError(f"unknown algorithm {algorithm!r}: choose {', '.join(relevant)}")
    table = Table(title=f"lazarus config{' for ' + algorithm if algorithm else ''}", show_lines=False)
    for column in ("key", "type", "default", "description"):
        table.add_column(column, overflow="fold")
    for key, type_name, default, description in describe():
        if algorithm is None or key.split(".")[0] in relevant[algorithm]:
            table.add_row(key, type_name, default, description)
    Console(width=160).print(table)


@config_app.command("dump")
def config_dump(
    config: Optional[Path] = typer.Option(None, "--config", help="YAML file."),
    overrides: List[str] = typer.Option([], "--set", help="key=value override (repeatable)."),
):
    """Print the fully resolved config (file + overrides + defaults) as YAML."""
    from lazarus.config import load_config, to_yaml

    typer.echo(to_yaml(load_config(config, overrides)), nl=False)


def _mount_subcommands() -> None:
    """Sub-apps that live in their own modules."""
    import importlib

    for name, module in (("ps", "lazarus.cli.ps"), ("data", "lazarus.cli.data"), ("experts", "lazarus.cli.experts"),
                         ("tools", "lazarus.cli.tools")):
        try:
            sub = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name == module:
                continue
            raise
        app.add_typer(sub.app, name=name)
    for module, fn in (("lazarus.cli.plot", "plot"), ("lazarus.cli.train", "register"), ("lazarus.cli.convert", "register")):  # noqa: E501
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name == module:
                continue
            raise
        getattr(mod, fn)(app) if fn == "register" else app.command("plot")(getattr(mod, fn))


_mount_subcommands()


def _terminate_like_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM (kill, a scheduler) unwinds like Ctrl-C: run dirs unlocked, temp files removed


def main() -> None:
    import signal

    signal.signal(signal.SIGTERM, _terminate_like_interrupt)
    try:
        app()
    except user_errors() as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
