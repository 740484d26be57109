"""`lazarus experts train|eval|list|register|run`: small recurrent control experts trained with PPO.

    lazarus experts train --env CartPole-v1 --arch gru --out runs/cartpole-gru
    lazarus experts train --env CartPole-v1 --out runs/cp --workers 4                    # env worker processes
    lazarus experts train --env CartPole-v1 --out runs/cp --workers 4 --launcher ray     # ... as Ray actors
    lazarus experts eval runs/cartpole-gru --episodes 20      # prints: mean return R over N episodes
    lazarus experts register runs/cartpole-gru --name cartpole
    lazarus experts list
    lazarus experts run projectile --task '{"target_distance": 37, "wind": -2}'
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from lazarus.errors import LazarusError

app = typer.Typer(help="RNN experts (GRU/LSTM/MLP) trained with PPO on control tasks.", no_args_is_help=True)


class ExpertsUsageError(LazarusError):
    """A bad `lazarus experts` argument; the message names the option."""


@app.command()
def train(
    env: Annotated[str, typer.Option("--env", help="CartPole-v1, CartPoleNoVel-v1, Pendulum-v1 or Projectile-v0.")],
    out: Annotated[Path, typer.Option("--out", help="Run directory: the expert, metrics.jsonl, plots/.")],
    arch: Annotated[Optional[str], typer.Option("--arch", help="gru, lstm or mlp (default gru).")] = None,
    total_steps: Annotated[
        Optional[int], typer.Option("--total-steps", help="Env steps (default: the env's preset).")
    ] = None,
    hidden_size: Annotated[Optional[int], typer.Option("--hidden-size", help="Network width (default 64).")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed")] = None,
    config: Annotated[
        Optional[Path], typer.Option("--config", help="YAML of PPOConfig fields (flags given here override it).")
    ] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="Also register the result under this name.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Train into an OUT that already holds files.")] = False,
    workers: Annotated[
        Optional[int], typer.Option("--workers", min=0, help="Env workers stepping the envs (0: this process).")
    ] = None,
    launcher: Annotated[
        Optional[str], typer.Option("--launcher", help="What runs the env workers: process (default) or ray.")
    ] = None,
    address: Annotated[
        Optional[str], typer.Option("--address", help="--launcher ray: the cluster to join (default: a local "
                                    "instance on 127.0.0.1).")
    ] = None,
):
    """Train an expert with recurrent PPO; OUT ends up holding the best-evaluated policy."""
    from pydantic import ValidationError

    from lazarus.experts.config import ARCHES, preset
    from lazarus.experts.ppo import train_to_directory
    from lazarus.experts.registry import register

    if arch is not None and arch not in ARCHES:
        raise ExpertsUsageError(f"--arch must be one of {', '.join(ARCHES)}, got {arch!r}")
    if out.exists() and any(out.iterdir()) and not force:
        raise ExpertsUsageError(f"--out {out} is not empty; pass --force to train into it anyway")
    if launcher is not None and launcher not in ("process", "ray"):
        raise ExpertsUsageError(f"--launcher must be process or ray, got {launcher!r}")
    if address is not None and launcher != "ray":
        raise ExpertsUsageError("--address is the Ray cluster to join: it needs --launcher ray")
    fields = _read_config(config) if config is not None else {}
    flags = {"arch": arch, "total_steps": total_steps, "hidden_size": hidden_size, "seed": seed, "workers": workers,
             "worker_launcher": launcher}
    fields.update({key: value for key, value in flags.items() if value is not None})  # flags beat the file
    try:
        ppo_config = preset(env, **fields)
    except ValidationError as error:
        raise ExpertsUsageError(f"{config or 'experts train'}: {_first_error(error)}") from None
    if launcher == "process" and not ppo_config.workers:
        raise ExpertsUsageError("--launcher runs the env workers: it needs --workers N (N >= 1)")
    if ppo_config.workers and ppo_config.worker_launcher == "ray":
        from lazarus.runtime.ray_launcher import ray_env_workers

        with ray_env_workers(ppo_config.workers, address, echo=typer.echo) as open_shard:
            summary = train_to_directory(ppo_config, out, log=typer.echo, open_shard=open_shard)
    else:
        summary = train_to_directory(ppo_config, out, log=typer.echo)
    typer.echo(f"wrote {out} (best eval mean return {summary['eval_return']:.1f} at {summary['env_steps']} "
               f"env steps, {summary['seconds']:.0f}s)")
    if name is not None:
        typer.echo(f"registered {register(out, name)}")


@app.command("eval")
def evaluate_expert(
    expert: Annotated[str, typer.Argument(help="Expert directory, NAME or NAME@vN.")],
    episodes: Annotated[int, typer.Option("--episodes", min=1, help="Episodes to average over.")] = 20,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the first episode (then seed+1, ...).")] = 10_000,
    sample: Annotated[bool, typer.Option("--sample", help="Sample actions instead of taking the mode.")] = False,
):
    """Run the expert's deterministic policy for N episodes and print their mean return."""
    import numpy as np

    from lazarus.experts.episodes import evaluate
    from lazarus.experts.policy import RolloutPolicy
    from lazarus.experts.registry import load_expert

    policy, _ = load_expert(expert)
    returns = evaluate(RolloutPolicy(policy), episodes, seed=seed, deterministic=not sample)
    typer.echo(f"{policy.spec.env} {policy.spec.arch}: min {min(returns):.1f} max {max(returns):.1f}")
    typer.echo(f"mean return {float(np.mean(returns)):.1f} over {episodes} episodes")


@app.command("list")
def list_command():
    """List the registered experts (newest version of each)."""
    from lazarus.experts.registry import list_experts, registry_root

    rows = list_experts()
    if not rows:
        typer.echo(f"no experts registered in {registry_root()}")
    for row in rows:
        score = "-" if row["eval_return"] is None else f"{row['eval_return']:.1f}"
        typer.echo(f"{row['name']}@{row['version']}  env={row['env']}  arch={row['arch']}  "
                   f"eval_return={score}  versions={','.join(row['versions'])}")


@app.command("register")
def register_command(
    expert: Annotated[str, typer.Argument(help="Expert directory (or NAME[@vN]) to copy in.")],
    name: Annotated[str, typer.Option("--name", help="Registry name; a new version is added.")],
):
    """Copy an expert into the registry as the next version of NAME."""
    from lazarus.experts.registry import register

    typer.echo(f"registered {register(expert, name)}")


@app.command("run")
def run_command(
    expert: Annotated[str, typer.Argument(help="Expert directory, NAME or NAME@vN.")],
    task: Annotated[str, typer.Option("--task", help="JSON object passed to the env's reset(options=...).")] = "{}",
    seed: Annotated[int, typer.Option("--seed")] = 0,
):
    """Run one deterministic episode on a task and print the outcome as JSON (what a tool call returns)."""
    from lazarus.experts.episodes import run_expert

    try:
        task_args = json.loads(task)
    except json.JSONDecodeError as error:
        raise ExpertsUsageError(f"--task is not JSON: {error}") from None
    if not isinstance(task_args, dict):
        raise ExpertsUsageError("--task must be a JSON object")
    result = run_expert(expert, task_args, seed=seed)
    result.pop("trace")
    typer.echo(json.dumps(result))


def _read_config(path: Path) -> dict:
    import yaml

    try:
        fields = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ExpertsUsageError(f"--config {path}: {error}".replace("\n", " ")) from None
    if not isinstance(fields, dict):
        raise ExpertsUsageError(f"--config {path}: expected a mapping of PPOConfig fields")
    return fields


def _first_error(error) -> str:
    first = error.errors()[0]
    return f"{'.'.join(str(part) for part in first['loc']) or 'config'}: {first['msg']}"
