"""One trainer step: value-and-grad (optionally compiled), gradient accumulation, global-norm clipping.

`Stepper.accumulate(loss_fn, *batch)` adds one micro-batch's gradients, weighted by its share of the
step; `Stepper.apply()` clips the global norm and applies the optimizer. Only trainable parameters
(LoRA adapters when training LoRA) get gradients.

A NaN/Inf loss or gradient norm never reaches the weights: the step's gradients are dropped, and then
`on_nonfinite="stop"` raises `NonFiniteStepError` (the weights are still the last finite ones), while
`"skip"` goes on with the next step, stopping anyway after `MAX_SKIPPED_IN_A_ROW` such steps in a row.
"""

from __future__ import annotations

import math
from typing import Callable

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_map

from lazarus.errors import LazarusError

MAX_SKIPPED_IN_A_ROW = 10


class NonFiniteStepError(LazarusError, ArithmeticError):
    """A NaN/Inf loss or gradient norm; the update was not applied. Says what to change."""


class Stepper:
    def __init__(self, model: nn.Module, optimizer: optim.Optimizer, loss_fn: Callable,
                 max_grad_norm: float | None = 1.0, compile: bool = True, on_nonfinite: str = "stop"):
        """`loss_fn(model, *arrays) -> (loss, metrics: dict[str, mx.array])`; `on_nonfinite`: stop or skip."""
        if on_nonfinite not in ("stop", "skip"):
            raise ValueError(f"on_nonfinite must be 'stop' or 'skip', got {on_nonfinite!r}")
        self.model = model
        self.optimizer = optimizer
        self.max_grad_norm = max_grad_norm
        self.on_nonfinite = on_nonfinite
        self.skipped = 0  # steps skipped for a non-finite loss or gradient norm, in total
        self._skipped_in_a_row = 0
        self._nonfinite_loss: float | None = None
        def loss_of_batch(*batch):
            loss, metrics = loss_fn(model, *batch)
            # MLX 0.32's compiled value-and-grad fails ("_Map_base::at") when an output depends only on
            # the inputs (e.g. a token count from the mask); tying each metric to the loss avoids it.
            return loss, {k: mx.stop_gradient(v) + 0.0 * mx.stop_gradient(loss) for k, v in metrics.items()}

        value_and_grad = nn.value_and_grad(model, loss_of_batch)
        if compile:
            state = [model.state, mx.random.state]
            value_and_grad = mx.compile(value_and_grad, inputs=state, outputs=state)
        self._value_and_grad = value_and_grad
        self._grads = None

    def accumulate(self, *batch, weight: float = 1.0) -> tuple[mx.array, dict]:
        """Forward+backward on one micro-batch; gradients are summed with `weight` (its share of the step)."""
        (loss, metrics), grads = self._value_and_grad(*batch)
        if weight != 1.0:
            grads = tree_map(lambda g: g * weight, grads)
        self._grads = grads if self._grads is None else tree_map(mx.add, self._grads, grads)
        mx.eval(loss, self._grads, metrics)
        if self._nonfinite_loss is None and not math.isfinite(loss.item()):
            self._nonfinite_loss = loss.item()
        return loss, metrics

    def apply(self) -> float:
        """Clip and apply the accumulated gradients; returns the pre-clip global gradient norm.

        A non-finite loss or norm drops the gradients without an update; see the module docstring.
        """
        if self._grads is None:
            raise RuntimeError("apply() called before any accumulate()")
        grads, bad_loss = self._grads, self._nonfinite_loss
        self._grads, self._nonfinite_loss = None, None
        norm = mx.sqrt(sum((g.astype(mx.float32) ** 2).sum() for g in _leaves(grads)))
        mx.eval(norm)
        if bad_loss is not None or not math.isfinite(norm.item()):
            return self._nonfinite(bad_loss, norm.item())
        if self.max_grad_norm:  # as optim.clip_grad_norm, reusing the norm computed above
            scale = mx.minimum(self.max_grad_norm / (norm + 1e-6), 1.0)
            grads = tree_map(lambda g: g * scale, grads)
        self.optimizer.update(self.model, grads)
        mx.eval(self.model.trainable_parameters(), self.optimizer.state)
        self._skipped_in_a_row = 0
        return norm.item()

    def _nonfinite(self, loss: float | None, norm: float) -> float:
        what = f"loss is {loss}" if loss is not None else f"gradient norm is {norm}"
        self.skipped += 1
        self._skipped_in_a_row += 1
        if self.on_nonfinite == "stop":
            raise NonFiniteStepError(f"{what}; stopped before applying it (the weights and the newest checkpoint "
                                     f"are the last finite ones). Lower optim.learning_rate, set "
                                     f"optim.max_grad_norm, or set training.on_nonfinite=skip")
        if self._skipped_in_a_row >= MAX_SKIPPED_IN_A_ROW:
            raise NonFiniteStepError(f"{what} for {self._skipped_in_a_row} steps in a row (training.on_nonfinite="
                                     f"skip); stopped. Lower optim.learning_rate or set optim.max_grad_norm")
        return float("nan")


def _leaves(tree):
    from mlx.utils import tree_flatten

    return [v for _, v in tree_flatten(tree)]
