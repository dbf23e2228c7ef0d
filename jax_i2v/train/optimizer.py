"""AdamW with global-norm clipping and a learning-rate schedule, from optax.

Defaults are ConsistI2V's (`train.py`, `training.yaml`): lr 5e-5 constant, betas (0.9, 0.999),
eps 1e-8, weight decay 1e-2 on every parameter (as torch's AdamW there), clipping at 0.5.
"""

from __future__ import annotations

import dataclasses

import optax

SCHEDULES = ("constant", "warmup_constant", "warmup_cosine")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    learning_rate: float = 5e-5
    schedule: str = "constant"
    warmup_steps: int = 0
    total_steps: int = 200_000  # for the cosine decay
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 1e-2
    grad_clip_norm: float = 0.5  # <= 0: no clipping

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"optim.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.learning_rate <= 0 or self.warmup_steps < 0 or self.total_steps < 1:
            raise ValueError(
                f"need optim.learning_rate > 0, warmup_steps >= 0, total_steps >= 1; got "
                f"{self.learning_rate}, {self.warmup_steps}, {self.total_steps}"
            )
        if not (0 <= self.b1 < 1 and 0 <= self.b2 < 1 and self.weight_decay >= 0 and self.eps > 0):
            raise ValueError("need 0 <= optim.b1, b2 < 1, weight_decay >= 0 and eps > 0")


def learning_rate_schedule(config: OptimizerConfig) -> optax.Schedule:
    lr = config.learning_rate
    if config.schedule == "constant":
        return optax.constant_schedule(lr)
    if config.schedule == "warmup_constant":
        return optax.join_schedules(
            [optax.linear_schedule(0.0, lr, max(config.warmup_steps, 1)), optax.constant_schedule(lr)],
            [config.warmup_steps],
        )
    return optax.warmup_cosine_decay_schedule(0.0, lr, config.warmup_steps, max(config.total_steps, config.warmup_steps + 1))


def make_optimizer(config: OptimizerConfig) -> optax.GradientTransformation:
    adamw = optax.adamw(learning_rate_schedule(config), b1=config.b1, b2=config.b2, eps=config.eps, weight_decay=config.weight_decay)
    if config.grad_clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), adamw)
    return adamw
