"""Image neck: fuse the backbone stages into one map at the stride of the shallowest one."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False
        ),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class LSSFPN(nn.Module):
    """Top-down fusion (BEVFusion's GeneralizedLSSFPN role), one output map.

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
