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


# Every layout a sparse kernel has been saved in, as the permutation that takes it to spconv 2.x's
# (out, kD, kH, kW, in): KRSC (spconv >= 2.2, and 2.1's implicit-GEMM convolutions), RSCK (spconv 1.x,
# mmcv), RSKC (spconv 2.1's Native algorithm: (kD, kH, kW, out, in)).
LAYOUTS = {"KRSC": (0, 1, 2, 3, 4), "RSCK": TO_SPCONV2, "RSKC": (3, 0, 1, 2, 4)}


def fitting_layouts(weight: torch.Tensor, expected: tuple[int, ...]) -> list[str]:
    """The layouts under which a 5-D kernel has the spconv 2.x shape `expected`."""
    return [name for name, order in LAYOUTS.items() if tuple(weight.shape[i] for i in order) == tuple(expected)]


def spconv2_kernels(kernels: dict[str, tuple[torch.Tensor, tuple[int, ...]]]) -> dict[str, torch.Tensor]:
    """Each kernel of one checkpoint (key -> (weight, expected spconv 2.x shape)) in spconv 2.x layout.

    A kernel whose shape fits one layout is read in it. One that fits several (a 3x3x3 kernel with as
    many input as output channels fits both RSCK and RSKC) is read in the layout that the checkpoint's
    other kernels show, which must then be a single one besides KRSC: a checkpoint is saved by one spconv
    version, whose only second layout is that of its KRSC convolutions. Anything else is an error
    naming the keys.
    """
    fits = {key: fitting_layouts(weight, expected) for key, (weight, expected) in kernels.items()}
    for key, layouts in fits.items():
        if not layouts:
            weight, expected = kernels[key]
            raise ValueError(f"{key}: kernel {tuple(weight.shape)} fits no sparse-kernel layout of {expected} ({', '.join(LAYOUTS)})")
    shown = sorted({layouts[0] for layouts in fits.values() if len(layouts) == 1} - {"KRSC"})
    if len(shown) > 1:
        raise ValueError(f"the checkpoint's sparse kernels mix the layouts {shown}; a checkpoint has one")
    converted = {}
    for key, layouts in fits.items():
        layout = layouts[0] if len(layouts) == 1 else (shown[0] if shown and shown[0] in layouts else None)
        if layout is None:
            raise ValueError(
                f"{key}: kernel {tuple(kernels[key][0].shape)} fits the layouts {layouts}, and no other kernel of "
                "the checkpoint says which one it was saved in"
            )
        converted[key] = kernels[key][0].permute(*LAYOUTS[layout]).contiguous()
    return converted
