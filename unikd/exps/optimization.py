"""The optimizer and learning-rate schedule of every experiment: AdamW with a one-cycle cosine schedule per step."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch


def one_cycle_factor(step: int, total_steps: int, warmup: float = 0.4, start: float = 0.1, end: float = 1e-3) -> float:
    """Learning-rate factor: cosine rise from `start` to 1 over the warmup fraction, cosine fall to `end`."""
    progress = min(step / total_steps, 1.0)
    if progress < warmup:
        return start + (1 - start) * (1 - math.cos(math.pi * progress / warmup)) / 2
    return end + (1 - end) * (1 + math.cos(math.pi * (progress - warmup) / (1 - warmup))) / 2


def one_cycle_adamw(
    parameters: Iterable[torch.nn.Parameter], lr: float, weight_decay: float, total_steps: int
) -> dict[str, Any]:
    """Lightning's `configure_optimizers` answer: AdamW and its one-cycle schedule stepped every batch.

    `total_steps` is read from the trainer at every (re)start and is not saved with the scheduler, so a run
    resumed with a larger --max_epochs stretches the schedule instead of failing."""
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    total_steps = max(total_steps, 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: one_cycle_factor(step, total_steps))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
