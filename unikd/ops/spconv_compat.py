"""The one place that imports spconv; on a CPU-only torch it also makes spconv's backward work.

spconv 2.x's CPU convolution backward (`spconv.pytorch.ops.indice_conv_backward`) asks for the
current CUDA stream, through `spconv.pytorch.ops.get_current_stream` ->
`torch.cuda.current_stream()`, before it checks whether the tensors are on the CPU. On a torch
built without CUDA that call raises "Torch not compiled with CUDA enabled". The CPU branch never
uses the stream, so when CUDA is absent we replace that one name in `spconv.pytorch.ops` with a
function returning the null stream (0), which is what spconv's other CPU paths pass.
"""

from __future__ import annotations

import spconv.pytorch as spconv
import torch
from spconv.pytorch import ops as _spconv_ops

__all__ = ["spconv", "apply_cpu_shim"]


def _null_stream() -> int:
    return 0


def apply_cpu_shim() -> bool:
    """Patch spconv's stream lookup when CUDA is unavailable (idempotent). Returns whether it is patched."""
    if torch.cuda.is_available():
        return False
    _spconv_ops.get_current_stream = _null_stream
    return True


apply_cpu_shim()
