"""`lazarus-learner`: the learner with its gRPC server (parameter server, Experience service, health).

    lazarus-learner --config C [--set k=v] [--listen HOST:PORT] [--token-file F] [--resume DIR]

Prints `listening on HOST:PORT` once actors can join (`lazarus-actor --learner HOST:PORT`), trains until
`training.max_steps`, tells the actors to stop, and exports like `lazarus train`. Ctrl-C or SIGTERM stops
the run (the actors hear it in their next heartbeat and exit).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

import lazarus  # noqa: F401  (OpenBLAS before mlx.core)
from lazarus.errors import LazarusError

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
def learner(
    config: Path = typer.Option(..., "--config", "-c", help="YAML config (configs/*.yaml); GRPO or PPO."),
    overrides: List[str] = typer.Option([], "--set", help="Override a field: section.key=value (repeatable)."),
    listen: Optional[str] = typer.Option(None, "--listen", help="HOST:PORT to serve on (default runtime.listen, "
                                         "127.0.0.1:0 = a free port). A non-loopback host needs --token-file."),
    token_file: Optional[Path] = typer.Option(None, "--token-file", help="File holding the shared auth token."),
    tls_cert: Optional[Path] = typer.Option(None, "--tls-cert", help="PEM certificate (with --tls-key)."),
    tls_key: Optional[Path] = typer.Option(None, "--tls-key", help="PEM private key (with --tls-cert)."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Checkpoint or run directory to resume from."),
    force: bool = typer.Option(False, "--force", help="Start over in a run directory that holds a previous run."),
):
    """Run the learner; rollout actors join with `lazarus-actor --learner HOST:PORT`."""
    from lazarus.config import load_config
    from lazarus.runtime.local import export
    from lazarus.runtime.process import serve_and_learn

    cfg = load_config(config, overrides)
    if cfg.algorithm not in ("grpo", "ppo"):
        raise LazarusError(f"{config}: algorithm {cfg.algorithm} runs with `lazarus train`; "
                           f"the learner runs grpo or ppo")
    learner_role, result = serve_and_learn(cfg, resume, listen=listen,
                                           token_file=str(token_file) if token_file else None,
                                           tls_cert=str(tls_cert) if tls_cert else None,
                                           tls_key=str(tls_key) if tls_key else None,
                                           echo=lambda line: print(line, flush=True), force=force)
    export(learner_role.model, cfg, Path(cfg.training.run_dir))
    for key, value in result.items():
        print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
    print(f"run directory: {cfg.training.run_dir}", flush=True)


def main() -> None:
    try:
        app()
    except LazarusError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: actors were told to stop", file=sys.stderr, flush=True)
        sys.exit(130)
