"""Numerical precision under mixed-precision training: losses in float32, TF32 on GPUs.

Under autocast (`--precision 16-mixed` / `bf16-mixed`) matrix products and convolutions run in 16 bits
even on float32 inputs, and elementwise ops keep their inputs' dtype. A loss or statistic that sums over
a BEV map, exponentiates a similarity or takes the log of a probability overflows or loses its precision
there (a Dice overlap of softmax masks scaled to mean 1 passes float16's 65504; sigmoid(8) is 1 in
float16, so log(1 - p) is -inf), and voxel indices of float16 coordinates fall in the wrong voxel.
`in_float32` runs such a function (the losses, the voxelization) with autocast off and its 16-bit
floating-point tensor arguments in float32.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch

from unikd.ops.spconv_compat import allow_tf32 as allow_spconv_tf32

F = TypeVar("F", bound=Callable[..., Any])
HALF_DTYPES = (torch.float16, torch.bfloat16)


def to_float32(value: Any) -> Any:
    """`value` with every 16-bit floating-point tensor (nested in lists, tuples, named tuples and mappings) in
    float32; other tensors (float32, float64, integers) as they are."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.dtype in HALF_DTYPES else value
    if isinstance(value, Mapping):
        return {key: to_float32(item) for key, item in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a NamedTuple
        return type(value)(*(to_float32(item) for item in value))
    if isinstance(value, (list, tuple)):
        return type(value)(to_float32(item) for item in value)
    return value


def in_float32(function: F) -> F:
    """Decorator: run `function` with autocast off (CUDA and CPU) and its 16-bit tensor arguments in float32."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with torch.autocast("cuda", enabled=False), torch.autocast("cpu", enabled=False):
            return function(*to_float32(args), **to_float32(kwargs))

    return wrapper  # type: ignore[return-value]


def enable_tf32() -> None:
    """Let float32 matrix products and convolutions use TF32 tensor cores (torch's and spconv's): on
    Ampere and later GPUs about 8x the float32 throughput at a 10-bit mantissa, as mixed precision keeps
    its float32 parts (the losses, BatchNorm) accurate enough."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.set_float32_matmul_precision("high")
    allow_spconv_tf32()
