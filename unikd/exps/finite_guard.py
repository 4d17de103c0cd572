"""What a training step does with a non-finite loss: stop at once (full precision), or, under mixed
precision, where an fp16 overflow is expected now and then and the grad scaler skips that update, warn
and count, and stop after `max_consecutive` such steps in a row."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch


class NonFiniteLoss(FloatingPointError):
    """Training diverged: loss terms are non-finite."""


class FiniteLossGuard:
    """Checks a step's named loss terms with one host synchronisation (the stacked `isfinite` flags)."""

    def __init__(self, mixed_precision: bool, max_consecutive: int) -> None:
        if max_consecutive < 1:
            raise ValueError(f"max_consecutive must be at least 1, got {max_consecutive}")
        self.mixed_precision = mixed_precision
        self.max_consecutive = max_consecutive
        self.consecutive = 0
        self.skipped = 0

    def check(self, losses: dict[str, torch.Tensor], where: str, resume_from: Path | None) -> bool:
        """True when every term is finite. Otherwise, under mixed precision and fewer than `max_consecutive`
        non-finite steps in a row, a warning naming the terms and False (the step's update is skipped);
        else a NonFiniteLoss naming the terms, `where` (epoch, step, samples) and the checkpoint to resume from."""
        finite = torch.stack([torch.isfinite(value.detach()).all() for value in losses.values()])
        if bool(finite.all()):
            self.consecutive = 0
            return True
        bad = {name: value for (name, value), ok in zip(losses.items(), finite.tolist(), strict=True) if not ok}
        terms = ", ".join(f"{name}={value.detach().float().flatten()[0].item()}" for name, value in bad.items())
        self.consecutive += 1
        if self.mixed_precision and self.consecutive < self.max_consecutive:
            self.skipped += 1
            warnings.warn(
                f"non-finite loss {where}: {terms}; the update is skipped ({self.consecutive} in a row, "
                f"{self.skipped} in all; training stops at {self.max_consecutive} in a row)",
                RuntimeWarning,
                stacklevel=2,
            )
            return False
        in_a_row = f" ({self.consecutive} steps in a row)" if self.mixed_precision else ""
        resume = (
            f"resume from the last finite checkpoint with --ckpt_path {resume_from}" if resume_from is not None
            else "no checkpoint was saved before it"
        )
        raise NonFiniteLoss(f"non-finite loss {where}{in_a_row}: {terms}; training diverged (lower lr, check the data); {resume}")
