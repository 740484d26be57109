"""Data-parallel learner replicas: each computes the gradient of its shard, one optimizer step for all.

With `training.learners: N`, every optimizer step's rows are cut into N contiguous shards (`shard_rows`).
Each replica accumulates the gradient of its shard with the step's *global* micro-batch weights, so the N
partial gradients add up to the gradient of the whole mini-batch, exactly as gradient accumulation does in
one learner. A parameter server in synchronous mode averages the N pushes; the first replica (the leader,
which owns the optimizer, its schedule and its checkpointed state) multiplies the mean back by N, clips and
steps once, and publishes the new weights; the other replicas (followers) wait for that version and load it.
Every replica therefore continues from the same weights and version.

The transport is a `GradientSync` (runtime/replicas.py: in-process for the leader, gRPC for followers); this
module only does the arithmetic around it. A replica that dies is the sync's business: the leader's
`gather` raises `ReplicaTimeout` (or, elastic, drops it and returns the mean of the shards that arrived).
"""

from __future__ import annotations

from typing import Callable, Protocol

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from lazarus.errors import LazarusError
from lazarus.training.step import Stepper


class ReplicaTimeout(LazarusError):
    """A synchronous data-parallel step did not complete: a replica died or is stuck; names it."""


class ReplicaDropped(LazarusError):
    """This replica was declared dead by the leader (elastic) and is no longer part of the run."""


class LeaderSync(Protocol):
    def gather(self, partial: dict[str, mx.array], version: int) -> tuple[dict[str, mx.array], int]:
        """Push the leader's partial gradient, wait for every live replica's; (their mean, shards of the step)."""

    def publish(self, weights: dict[str, mx.array]) -> int:
        """The trainable weights after the step, as the next version; returns it."""


class FollowerSync(Protocol):
    def exchange(self, partial: dict[str, mx.array], version: int) -> tuple[int, dict[str, mx.array]]:
        """Push this replica's partial gradient for `version`; wait for the leader's step; (version, weights)."""


def shard_rows(rows: np.ndarray, shard: int, shards: int) -> np.ndarray:
    """The contiguous part `shard` of `shards` of one optimizer step's rows (near-equal sizes)."""
    return np.array_split(rows, shards)[shard]


def partial_gradient(stepper: Stepper) -> dict[str, mx.array]:
    """The stepper's accumulated gradient by flat name; zeros when its shard of the step was empty."""
    if stepper._grads is not None:
        grads = dict(tree_flatten(stepper._grads))
    else:
        grads = {name: mx.zeros_like(p) for name, p in tree_flatten(stepper.model.trainable_parameters())}
    mx.eval(list(grads.values()))
    return grads


class LeaderStepper(Stepper):
    """Replica 0: its own optimizer steps once on the mean of all replicas' gradients, then publishes."""

    def __init__(self, model: nn.Module, optimizer: optim.Optimizer, loss_fn: Callable, sync: LeaderSync, *,
                 version: int, max_grad_norm: float | None = 1.0, compile: bool = True, on_nonfinite: str = "stop"):
        super().__init__(model, optimizer, loss_fn, max_grad_norm=max_grad_norm, compile=compile,
                         on_nonfinite=on_nonfinite)
        self.sync, self.version = sync, version

    def apply(self) -> float:
        """Gather the replicas' gradients, clip and step their sum (as one learner would), publish."""
        partial = partial_gradient(self)
        mean, shards = self.sync.gather(partial, self.version)
        self._grads = tree_unflatten([(name, g * shards) for name, g in mean.items()])
        try:
            norm = super().apply()  # a non-finite step is dropped (or stops the run) exactly as in one learner
        finally:
            self.version = self.sync.publish(dict(tree_flatten(self.model.trainable_parameters())))
        return norm


class FollowerStepper(Stepper):
    """Replicas 1..N-1: push the shard's gradient, load the weights the leader's step produced."""

    def __init__(self, model: nn.Module, loss_fn: Callable, sync: FollowerSync, *, version: int,
                 compile: bool = True):
        # The optimizer lives with the leader; this one is never stepped.
        super().__init__(model, optim.SGD(learning_rate=0.0), loss_fn, max_grad_norm=None, compile=compile)
        self.sync, self.version = sync, version

    def apply(self) -> float:
        partial = partial_gradient(self)
        self._grads, self._nonfinite_loss = None, None
        norm = mx.sqrt(sum((g.astype(mx.float32) ** 2).sum() for g in partial.values())).item()
        self.version, weights = self.sync.exchange(partial, self.version)
        self.model.load_weights(list(weights.items()), strict=False)
        mx.eval(self.model.parameters())
        return norm
