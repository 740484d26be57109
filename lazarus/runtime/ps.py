"""Launchers for the parameter server: serve a model directory until interrupted; ask a server's status.

The CLI (`lazarus ps serve`, `lazarus ps status`) calls these; they hold no logic of their own beyond
loading the model, reading the token file and handling SIGINT/SIGTERM.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from pathlib import Path

DEFAULT_PORT = 50551


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors a user can fix (bad flag, file, address, token): the CLI prints them as one line."""
    from lazarus.distributed.auth import InsecureBindError, TokenFileError
    from lazarus.distributed.client import ParameterServerError
    from lazarus.distributed.server import ServerStateError
    from lazarus.models.load import ModelLoadError

    return (InsecureBindError, TokenFileError, ParameterServerError, ServerStateError, ModelLoadError,
            ValueError, OSError)


def serve_model(model_dir: str | Path, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                token_file: str | Path | None = None, tls_cert: str | Path | None = None,
                tls_key: str | Path | None = None, mode: str = "sync", workers: int = 1,
                max_staleness: int = 0, optimizer: str = "sgd", learning_rate: float = 1e-3,
                state_dir: str | Path | None = None, transfer_port: int = 0,
                on_ready: Callable[[str, int, int | None], None] | None = None) -> int:
    """Serve the weights of `model_dir` until SIGINT/SIGTERM; returns the last version served.

    `transfer_port`: the weight transfer socket for remote clients (0: a free port, -1: none).
    `on_ready(address, version, transfer port or None)` is called once the server listens (the CLI prints it).
    """
    from lazarus.distributed.auth import check_bind, read_token
    from lazarus.distributed.server import ParameterStore, serve
    from lazarus.models.load import load

    token = read_token(token_file) if token_file else None
    check_bind(host, token)  # before the (slow) model load
    model, _ = load(model_dir)
    store = ParameterStore.from_model(model, mode=mode, workers=workers, max_staleness=max_staleness,
                                      optimizer=optimizer, learning_rate=learning_rate, state_dir=state_dir)
    del model
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    running = serve(store, host=host, port=port, token=token, tls_cert=tls_cert, tls_key=tls_key,
                    transfer_port=None if transfer_port < 0 else transfer_port)
    try:
        if on_ready is not None:
            on_ready(running.address, store.version, running.transfer.port if running.transfer else None)
        # in slices: a signal the kernel hands to one of gRPC's threads only sets a flag, which this thread
        # acts on when it next runs Python; an untimed wait could sleep through SIGTERM for good
        while not stop.wait(0.5):
            pass
    finally:
        running.stop(grace=2.0)
        store.checkpoint()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return store.version


def status(address: str, token_file: str | Path | None = None, tls_cert: str | Path | None = None,
           timeout: float = 5.0) -> dict:
    """Health and version of the server at `address`, as a dict of printable fields."""
    from lazarus.distributed.auth import read_token
    from lazarus.distributed.client import ParameterClient

    token = read_token(token_file) if token_file else None
    with ParameterClient(address, token=token, tls_cert=tls_cert, timeout=timeout, retries=2) as client:
        health = client.health(timeout=timeout)
        info = client.info(timeout=timeout)
    return {
        "address": address,
        "health": health,
        "version": info.version,
        "mode": info.mode,
        "workers": info.workers,
        "max_staleness": info.max_staleness,
        "optimizer": info.optimizer,
        "pending_gradients": info.pending_gradients,
        "tensors": len(info.tensors),
        "bytes": info.total_bytes,
        "trainable_bytes": info.trainable_bytes,
    }
