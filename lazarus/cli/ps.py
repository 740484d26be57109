"""`lazarus ps`: run a parameter server for a model directory, or ask one for its status."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="Parameter server: versioned weight broadcast and gradient sync over gRPC.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


def _fail(e: BaseException) -> None:
    typer.echo(f"error: {e}", err=True)
    raise typer.Exit(2)


@app.command()
def serve(
    model: Path = typer.Option(..., "--model", help="Model directory whose weights are served."),
    port: int = typer.Option(50551, "--port", help="TCP port; 0 lets the OS pick (printed on start)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; non-loopback needs --token-file."),
    token_file: Optional[Path] = typer.Option(None, "--token-file", help="File holding the shared auth token."),
    tls_cert: Optional[Path] = typer.Option(None, "--tls-cert", help="PEM certificate (with --tls-key)."),
    tls_key: Optional[Path] = typer.Option(None, "--tls-key", help="PEM private key (with --tls-cert)."),
    mode: str = typer.Option("sync", "--mode", help="sync: average N workers' gradients per step; async: "
                             "apply each gradient as it arrives."),
    workers: int = typer.Option(1, "--workers", help="sync: gradients averaged per step."),
    max_staleness: int = typer.Option(0, "--max-staleness", help="async: oldest accepted base version is "
                                      "version - K."),
    optimizer: str = typer.Option("sgd", "--optimizer", help="sgd, adam or adamw (mlx.optimizers)."),
    learning_rate: float = typer.Option(1e-3, "--lr", help="Optimizer learning rate."),
    state_dir: Optional[Path] = typer.Option(None, "--state-dir", help="Checkpoint weights, optimizer and "
                                             "version here; a restart on the same dir continues."),
    transfer_port: int = typer.Option(0, "--transfer-port", min=-1, max=65535, help="Port of the weight "
                                      "transfer socket on --host, through which clients on other hosts pull "
                                      "(0: a free one, printed on start; -1: none, they stream over gRPC)."),
):
    """Serve MODEL's weights until interrupted (Ctrl-C or SIGTERM checkpoints and stops)."""
    from lazarus.runtime.ps import serve_model, user_errors

    def ready(address: str, version: int, transfer: Optional[int]) -> None:
        where = f"; weight transfers on port {transfer}" if transfer is not None else ""
        typer.echo(f"lazarus ps: serving {model} on {address} (version {version}, {mode}{where})")

    try:
        serve_model(model, host=host, port=port, token_file=token_file, tls_cert=tls_cert, tls_key=tls_key,
                    mode=mode, workers=workers, max_staleness=max_staleness, optimizer=optimizer,
                    learning_rate=learning_rate, state_dir=state_dir, transfer_port=transfer_port, on_ready=ready)
    except user_errors() as e:
        _fail(e)


@app.command()
def status(
    address: str = typer.Argument(..., help="HOST:PORT of the parameter server."),
    token_file: Optional[Path] = typer.Option(None, "--token-file", help="File holding the shared auth token."),
    tls_cert: Optional[Path] = typer.Option(None, "--tls-cert", help="Trusted PEM certificate for TLS."),
    timeout: float = typer.Option(5.0, "--timeout", help="Seconds to wait for an answer."),
):
    """Print the health, version and mode of a running parameter server."""
    from lazarus.runtime.ps import status as ps_status
    from lazarus.runtime.ps import user_errors

    try:
        fields = ps_status(address, token_file=token_file, tls_cert=tls_cert, timeout=timeout)
    except user_errors() as e:
        _fail(e)
    for key, value in fields.items():
        typer.echo(f"{key}: {value}")


if __name__ == "__main__":
    app()
