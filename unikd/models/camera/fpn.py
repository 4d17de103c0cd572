"""Image necks: fuse the backbone stages into one map.

`LSSFPN` (unikd's default) fuses top-down at the stride of the shallowest stage; `image_neck`
also builds mmdet3d's SECONDFPN as an image neck (BEVDepth, UniDistill: each stage to a common
stride by a strided conv when its upsample stride s < 1, kernel = stride = 1/s, a transposed conv
when s > 1, a 1x1 conv when s = 1; BN eps 1e-3, momentum 0.01; the levels concatenated).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from unikd.models.decoder import SECONDFPN

IMAGE_NECKS = ("lss", "secondfpn")


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False
        ),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class LSSFPN(nn.Module):
    """Top-down fusion, one output map: the first output of BEVFusion's GeneralizedLSSFPN, which is all its
    view transform reads (`unikd.interop.bevfusion_camera` maps the keys; parity in its test).

    From the deepest stage up: upsample the running map to the next shallower stage (bilinear),
    concatenate, 1x1 conv + BN + ReLU to `out_channels`, then 3x3 conv + BN + ReLU. With ResNet
    stages (1, 2, 3) the output is at stride 8; with (2, 3) at stride 16.
    """

    def __init__(self, in_channels: list[int], out_channels: int = 256):
        super().__init__()
        if len(in_channels) < 2:
            raise ValueError(f"LSSFPN fuses at least two stages, got in_channels={in_channels}")
        self.out_channels = out_channels
        self.lateral = nn.ModuleList()
        self.smooth = nn.ModuleList()
        deeper = in_channels[-1]
        for channels in reversed(in_channels[:-1]):
            self.lateral.append(conv_bn_relu(channels + deeper, out_channels, 1))
            self.smooth.append(conv_bn_relu(out_channels, out_channels, 3))
            deeper = out_channels

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """[N, out_channels, H_0, W_0] at the size of `features[0]`."""
        x = features[-1]
        for i, (lateral, smooth) in enumerate(zip(self.lateral, self.smooth, strict=True)):
            skip = features[-2 - i]
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = smooth(lateral(torch.cat([skip, x], dim=1)))
        return x


def image_neck(
    kind: str,
    in_channels: Sequence[int],
    in_strides: Sequence[int],
    channels: int | Sequence[int],
    upsample_strides: Sequence[float] | None = None,
) -> tuple[nn.Module, int, int]:
    """(neck, its output channels, its output stride) over backbone stages of `in_channels` at `in_strides`.

    "lss": `LSSFPN` with `channels` (an int) output channels. "secondfpn": SECONDFPN with `channels`
    per level (a sequence, one per stage) and `upsample_strides`, which must bring every stage to one
    stride (stage stride / upsample stride).
    """
    if kind == "lss":
        if not isinstance(channels, int) or upsample_strides is not None:
            raise ValueError(f"the lss neck takes one channel count and no upsample strides, got {channels}, {upsample_strides}")
        return LSSFPN(list(in_channels), channels), channels, in_strides[0]
    if kind == "secondfpn":
        if isinstance(channels, int) or upsample_strides is None or not len(channels) == len(upsample_strides) == len(in_channels):
            raise ValueError(
                f"the secondfpn neck takes one channel count and one upsample stride per stage ({len(in_channels)}), "
                f"got {channels} and {upsample_strides}"
            )
        strides = {stride / up for stride, up in zip(in_strides, upsample_strides, strict=True)}
        if len(strides) != 1 or not float(next(iter(strides))).is_integer():
            raise ValueError(f"upsample strides {tuple(upsample_strides)} do not bring stages at strides {tuple(in_strides)} to one stride")
        neck = SECONDFPN(in_channels, channels, upsample_strides)
        return neck, neck.out_channels, int(next(iter(strides)))
    raise ValueError(f"image neck must be one of {IMAGE_NECKS}, got {kind!r}")
