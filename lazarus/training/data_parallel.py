"""Data-parallel learner replicas: each computes gradients on its shard, the parameter server steps once.

`DataParallelStepper` is the `Stepper` of one of N replicas. `accumulate()` is unchanged (forward and
backward on the replica's share of the batch); `apply()` does not step locally: it pushes the replica's
gradient to a `ParameterStore(mode="sync", workers=N)`, which averages the N pushes of a version and
applies its optimizer once, then waits for that version and loads its trainable weights. Every replica
therefore continues from the same weights and the same version.

Each replica's gradient is the mean over its own shard; it is pushed scaled by `N * share` (share = its
fraction of the global batch), so the server's plain N-way average equals the gradient of the mean loss
over the whole batch even when shards differ in size. Global-norm clipping would have to act on that
average, on the server: this stepper refuses `max_grad_norm` rather than clip each shard differently.

A replica that dies leaves the version incomplete: the others' `apply()` raises `ReplicaTimeout` after
`step_timeout` seconds, naming how many of the N replicas pushed.
"""

from __future__ import annotations

from typing import Callable

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten

from lazarus.errors import LazarusError
from lazarus.training.step import Stepper


class ReplicaTimeout(LazarusError):
    """A synchronous data-parallel step did not complete: a replica died or is too slow."""


class DataParallelConfigError(LazarusError):
    """A data-parallel setting that cannot work (e.g. per-shard clipping)."""


class DataParallelStepper(Stepper):
    """One replica's stepper: local gradients, the step taken by the parameter server's sync mode."""

    def __init__(self, model: nn.Module, loss_fn: Callable, client, replica_id: str, replicas: int,
                 share: float | None = None, *, max_grad_norm: float | None = None, compile: bool = True,
                 step_timeout: float = 120.0):
        """`client`: a `ParameterClient` of a store in sync mode with `workers == replicas`."""
        if max_grad_norm:
            raise DataParallelConfigError(
                "optim.max_grad_norm: data-parallel learners cannot clip per replica (the norm belongs to the "
                "averaged gradient); set it to null with training.learners > 1")
        if replicas < 1:
            raise DataParallelConfigError(f"training.learners must be >= 1, got {replicas}")
        # The optimizer lives on the parameter server; this one is never stepped.
        super().__init__(model, optim.SGD(learning_rate=0.0), loss_fn, max_grad_norm=None, compile=compile)
        self.client, self.replica_id, self.replicas = client, replica_id, replicas
        self.share = 1.0 / replicas if share is None else share
        self.step_timeout = step_timeout
        self.version = self.pull(-1)

    def pull(self, have_version: int) -> int:
        """Load the server's trainable weights if newer than `have_version`; returns the version held."""
        snapshot = self.client.pull_if_newer(have_version, scope="trainable")
        if snapshot is None:
            return have_version
        self.model.load_weights(list(snapshot.weights.items()), strict=False)
        mx.eval(self.model.parameters())
        return snapshot.version

    def apply(self) -> float:
        """Push this shard's gradient, wait for the N-way step, load its weights; returns the local grad norm."""
        from lazarus.distributed.client import ServerUnavailable

        if self._grads is None:
            raise RuntimeError("apply() called before any accumulate()")
        scale = self.replicas * self.share
        grads = {name: g * scale if scale != 1.0 else g for name, g in tree_flatten(self._grads)}
        norm = mx.sqrt(sum((g.astype(mx.float32) ** 2).sum() for g in grads.values()))
        mx.eval(norm, *grads.values())
        self._grads = None
        base = self.version
        result = self.client.push_gradients(grads, base, worker_id=self.replica_id, timeout=self.step_timeout)
        if not result.applied:
            try:
                self.client.wait_for_version(base + 1, timeout=self.step_timeout)
            except ServerUnavailable:
                raise ReplicaTimeout(
                    f"training.learners: step {base + 1} did not complete within {self.step_timeout:g} s: "
                    f"{self._pushed()} of {self.replicas} replicas pushed gradients (a replica died or is "
                    f"stuck)") from None
        self.version = self.pull(base)
        return float(norm)

    def _pushed(self) -> str:
        try:
            return str(self.client.info(timeout=5.0).pending_gradients)
        except Exception:  # the server itself may be gone: the count is then unknown
            return "fewer"
