"""When the value checks that read a tensor back to the host run.

Such a check (`.any()` of a condition, `.tolist()` for a message) makes the host wait for every kernel
queued on an accelerator: a host sync. The checks of the training step's inputs (ground-truth boxes and
labels in the detection targets, cell indices in `bev_pool`) therefore run on CPU tensors always (there
is no queue to wait for) and on accelerator tensors only when the environment variable
`UNIKD_SYNC_CHECKS` is 1. Without them a bad input still fails, later and less clearly: NaN or infinite
losses (the step's finite-loss check), or an index error (a device-side assertion on CUDA).
"""

from __future__ import annotations

import os

import torch

SYNC_CHECKS_ENV = "UNIKD_SYNC_CHECKS"


def value_checks(tensor: torch.Tensor) -> bool:
    """Whether to run the checks that read `tensor`'s values back (module doc)."""
    setting = os.environ.get(SYNC_CHECKS_ENV, "0")
    if setting not in ("0", "1"):
        raise ValueError(f"{SYNC_CHECKS_ENV} must be 0 or 1, got {setting!r}")
    return tensor.device.type == "cpu" or setting == "1"
