"""Adapters (connectors) that map a student feature onto the teacher's shape.

`build_adapter` picks the adapter from the two (C, H, W) shapes:

- equal shapes: identity;
- different channels: 1x1 conv + BN;
- different resolution (same aspect ratio, same metric region): bilinear resize to the teacher's H, W
  (align_corners=False, so cell centres stay on their metric positions);
- both: the 1x1 conv + BN at the student's resolution, then the resize;
- different aspect ratio: ValueError naming both shapes (the two maps cannot cover the same cells).

Adapters train with the student but belong to neither network: each term that needs one holds its own, and
the terms live in the distiller beside the student, so the student's own state dict (what is exported) never
holds them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

ADAPTER_KINDS = ("identity", "conv", "resize", "conv_resize")


class Resize(nn.Module):
    """Bilinear resize of [B, C, H, W] to a fixed (H, W), align_corners=False."""

    def __init__(self, size: tuple[int, int]) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)

    def extra_repr(self) -> str:
        return f"size={self.size}"


def resize_to(student_size: Sequence[int], teacher_size: Sequence[int]) -> nn.Module:
    """Bilinear resize to the teacher's (H, W) when the student's differs, else identity."""
    if tuple(student_size) == tuple(teacher_size):
        return nn.Identity()
    return Resize(tuple(teacher_size))


def _conv_bn(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))


def _check_shape(name: str, shape: Iterable[int]) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3:
        raise ValueError(f"{name} shape must be (C, H, W), got {shape}")
    return shape


def build_adapter(
    student_shape: Iterable[int], teacher_shape: Iterable[int], override: str | None = None
) -> nn.Module:
    """An adapter mapping [B, *student_shape] to [B, *teacher_shape]; shapes are (C, H, W).

    `override` forces one of ADAPTER_KINDS (e.g. "conv" for a learnable hint regressor between
    equal shapes); it must still produce the teacher's shape.
    """
    c_s, h_s, w_s = _check_shape("student", student_shape)
    c_t, h_t, w_t = _check_shape("teacher", teacher_shape)
    if h_s * w_t != h_t * w_s:
        raise ValueError(
            f"cannot align student {(c_s, h_s, w_s)} with teacher {(c_t, h_t, w_t)}: "
            f"aspect ratios H/W differ ({h_s}/{w_s} vs {h_t}/{w_t})"
        )
    needs_conv, needs_resize = c_s != c_t, (h_s, w_s) != (h_t, w_t)
    kind = override
    if kind is None:
        kind = {(False, False): "identity", (True, False): "conv", (False, True): "resize"}.get(
            (needs_conv, needs_resize), "conv_resize"
        )
    if kind not in ADAPTER_KINDS:
        raise ValueError(f"unknown adapter kind {kind!r}; expected one of {ADAPTER_KINDS}")
    if (needs_conv and "conv" not in kind) or (needs_resize and "resize" not in kind):
        raise ValueError(
            f"adapter {kind!r} cannot map student {(c_s, h_s, w_s)} to teacher {(c_t, h_t, w_t)}"
        )
    if kind == "identity":
        return nn.Identity()
    if kind == "conv":
        return _conv_bn(c_s, c_t)
    if kind == "resize":
        return Resize((h_t, w_t))
    return nn.Sequential(_conv_bn(c_s, c_t), Resize((h_t, w_t)))
