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
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

SYNC_CHECKS_ENV = "UNIKD_SYNC_CHECKS"


def value_checks(tensor: torch.Tensor) -> bool:
    """Whether to run the checks that read `tensor`'s values back (module doc)."""
    setting = os.environ.get(SYNC_CHECKS_ENV, "0")
    if setting not in ("0", "1"):
        raise ValueError(f"{SYNC_CHECKS_ENV} must be 0 or 1, got {setting!r}")
    return tensor.device.type == "cpu" or setting == "1"


HOST_READS = {"aten::_local_scalar_dense", "aten::nonzero", "aten::equal", "aten::is_nonzero"}


def dispatched_ops(call: Callable[[], object]) -> tuple[int, list[str]]:
    """(operators `call` dispatches, the host reads among them): each operator is a kernel launch on a GPU
    (views aside), each read (`.item()`/`bool()` of a tensor, `nonzero`, `torch.equal`, `Tensor.tolist`) a
    host sync. Counted on any device, CPU included; for tests and benchmarks."""
    ops = 0
    reads: list[str] = []

    class Counter(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            nonlocal ops
            ops += 1
            if func.name().split(".")[0] in HOST_READS:
                reads.append(func.name())
            return func(*args, **(kwargs or {}))

    tolist = torch.Tensor.tolist

    def counted_tolist(self: torch.Tensor) -> object:
        reads.append("tolist")
        return tolist(self)

    torch.Tensor.tolist = counted_tolist
    try:
        with Counter():
            call()
    finally:
        torch.Tensor.tolist = tolist
    return ops, reads
