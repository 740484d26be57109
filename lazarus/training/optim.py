"""Optimizers and learning-rate schedules from `mlx.optimizers`: linear warmup, then a decay."""

from __future__ import annotations

import mlx.core as mx
import mlx.optimizers as optim


def build_schedule(learning_rate: float, schedule: str, total_steps: int, warmup_steps: int = 0,
                   min_lr_ratio: float = 0.0, decay_rate: float = 0.999):
    """Warmup from 0 to `learning_rate` over `warmup_steps`, then constant / cosine / linear / exponential."""
    decay_steps = max(total_steps - warmup_steps, 1)
    end = learning_rate * min_lr_ratio
    if schedule == "constant":
        if warmup_steps <= 0:
            return learning_rate
        main = lambda step: mx.array(learning_rate, dtype=mx.float32)  # noqa: E731
    elif schedule == "cosine":
        main = optim.cosine_decay(learning_rate, decay_steps, end)
    elif schedule == "linear":
        main = optim.linear_schedule(learning_rate, end, decay_steps)
    elif schedule == "exponential":
        main = optim.exponential_decay(learning_rate, decay_rate)
    else:
        raise ValueError(f"optim.schedule: unknown schedule {schedule!r}")
    if warmup_steps <= 0:
        return main
    warmup = optim.linear_schedule(0.0, learning_rate, warmup_steps)
    return optim.join_schedules([warmup, main], [warmup_steps])


def build_optimizer(cfg, total_steps: int, learning_rate: float | None = None) -> optim.Optimizer:
    """An mlx optimizer from an `OptimConfig` (optionally with another peak learning rate)."""
    lr = build_schedule(learning_rate or cfg.learning_rate, cfg.schedule, total_steps, cfg.warmup_steps,
                        cfg.min_lr_ratio, cfg.decay_rate)
    name = cfg.optimizer
    if name == "adamw":
        return optim.AdamW(learning_rate=lr, betas=list(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)
    if name == "adam":
        return optim.Adam(learning_rate=lr, betas=list(cfg.betas), eps=cfg.eps)
    if name == "sgd":
        return optim.SGD(learning_rate=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if name == "lion":
        return optim.Lion(learning_rate=lr, betas=list(cfg.betas), weight_decay=cfg.weight_decay)
    if name == "adafactor":
        return optim.Adafactor(learning_rate=lr)
    raise ValueError(f"optim.optimizer: unknown optimizer {name!r}")
