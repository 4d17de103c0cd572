"""Sparse-convolution kernel layouts: spconv 1.x (and mmcv's ops) store (kD, kH, kW, in, out), spconv 2.x
(which unikd uses) stores (out, kD, kH, kW, in)."""

from __future__ import annotations

import torch

TO_SPCONV2 = (4, 0, 1, 2, 3)
TO_SPCONV1 = (1, 2, 3, 4, 0)


def spconv2_kernel(weight: torch.Tensor, expected: tuple[int, ...], key: str) -> torch.Tensor:
    """A 5-D kernel in spconv 2.x layout with shape `expected`, whichever of the two layouts it came in.

    The layouts can only be confused when every dimension is equal, which no real encoder has;
    that case, and a kernel that fits neither, is an error naming the key.
    """
    as_is = tuple(weight.shape) == expected
    permuted = weight.permute(*TO_SPCONV2)
    from_spconv1 = tuple(permuted.shape) == expected
    if as_is and from_spconv1 and not torch.equal(weight, permuted):
        raise ValueError(f"{key}: kernel {tuple(weight.shape)} fits both spconv layouts; cannot tell which it is")
    if as_is:
        return weight
    if from_spconv1:
        return permuted.contiguous()
    raise ValueError(
        f"{key}: kernel {tuple(weight.shape)} fits neither spconv 2.x {expected} nor spconv 1.x "
        f"{tuple(expected[i] for i in TO_SPCONV1)}"
    )


def spconv1_kernel(weight: torch.Tensor) -> torch.Tensor:
    """A spconv 2.x kernel (out, kD, kH, kW, in) in spconv 1.x layout (kD, kH, kW, in, out)."""
    return weight.permute(*TO_SPCONV1).contiguous()
