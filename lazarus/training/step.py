"""One trainer step: value-and-grad (optionally compiled), gradient accumulation, global-norm clipping.

`Stepper.accumulate(loss_fn, *batch)` adds one micro-batch's gradients, weighted by its share of the
step; `Stepper.apply()` clips the global norm and applies the optimizer. Only trainable parameters
(LoRA adapters when training LoRA) get gradients.
"""

from __future__ import annotations

from typing import Callable

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_map


class Stepper:
    def __init__(self, model: nn.Module, optimizer: optim.Optimizer, loss_fn: Callable,
                 max_grad_norm: float | None = 1.0, compile: bool = True):
        """`loss_fn(model, *arrays) -> (loss, metrics: dict[str, mx.array])`."""
        self.model = model
        self.optimizer = optimizer
        self.max_grad_norm = max_grad_norm
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
        return loss, metrics

    def apply(self) -> float:
        """Clip and apply the accumulated gradients; returns the pre-clip global gradient norm."""
        if self._grads is None:
            raise RuntimeError("apply() called before any accumulate()")
        grads = self._grads
        if self.max_grad_norm:
            grads, norm = optim.clip_grad_norm(grads, self.max_grad_norm)
        else:
            norm = mx.sqrt(sum((g.astype(mx.float32) ** 2).sum() for g in _leaves(grads)))
        self.optimizer.update(self.model, grads)
        mx.eval(self.model.trainable_parameters(), self.optimizer.state, norm)
        self._grads = None
        return float(norm)


def _leaves(tree):
    from mlx.utils import tree_flatten

    return [v for _, v in tree_flatten(tree)]
