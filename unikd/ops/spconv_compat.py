"""The one place that imports spconv, with two small patches that make its CPU path correct.

1. Backward without CUDA. spconv's CPU convolution backward (`spconv.pytorch.ops.indice_conv_backward`)
   asks for the current CUDA stream (`ops.get_current_stream` -> `torch.cuda.current_stream()`)
   before it checks whether the tensors are on the CPU; on a torch without CUDA that raises
   "Torch not compiled with CUDA enabled". The CPU branch never uses the stream, so when CUDA is
   unavailable `ops.get_current_stream` is replaced by a function returning the null stream (0),
   which is what spconv's other CPU paths pass.
2. A data race in the CPU scatter-add. A CPU-only spconv build convolves CPU tensors in Python by
   gather -> matmul -> `SpconvOps.scatter_add_cpu`, and that C++ kernel shares its row pointers
   between threads, so with more than one thread some output rows receive another row's values
   (forward and backward results change from run to run). For such builds `ops.SpconvOps` is
   replaced by a subclass whose `scatter_add_cpu` is a torch `index_add_` on the same memory.

`apply_cpu_shim()` runs on import and is idempotent.
"""

from __future__ import annotations

import spconv.pytorch as spconv
import torch
from spconv.cppconstants import CPU_ONLY_BUILD
from spconv.pytorch import ops as _spconv_ops

__all__ = ["spconv", "apply_cpu_shim"]

_SpconvOps = _spconv_ops.SpconvOps


def _null_stream() -> int:
    return 0


class _SpconvOpsSerialScatter(_SpconvOps):
    """spconv's ops with a race-free CPU scatter-add."""

    @staticmethod
    def scatter_add_cpu(out, inp, inds) -> None:  # tensorview tensors: out [M, C], inp [>= n, C], inds [n]
        index = torch.from_numpy(inds.numpy_view()).long()
        source = torch.from_numpy(inp.numpy_view())[: index.shape[0]]
        torch.from_numpy(out.numpy_view()).index_add_(0, index, source)


def apply_cpu_shim() -> None:
    """Patch spconv's CPU path where needed: the stream lookup without CUDA, the scatter-add on CPU-only builds."""
    if not torch.cuda.is_available():
        _spconv_ops.get_current_stream = _null_stream
    if CPU_ONLY_BUILD:
        _spconv_ops.SpconvOps = _SpconvOpsSerialScatter


apply_cpu_shim()
