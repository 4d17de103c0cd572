"""ConvFuser: concatenate modality BEV maps and mix them with conv3x3 + BN + ReLU (BEVFusion)."""

from __future__ import annotations

import torch
from torch import nn


class ConvFuser(nn.Sequential):
    """[B, sum(in_channels), H, W] concatenation of the inputs -> [B, out_channels, H, W]."""

    def __init__(self, in_channels: list[int], out_channels: int = 256):
        super().__init__(
            nn.Conv2d(sum(in_channels), out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )
        self.in_channels = list(in_channels)

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        """Fuse BEV maps given in the order of `in_channels` (e.g. [camera, lidar]) on the same grid."""
        channels = [x.shape[1] for x in inputs]
        if channels != self.in_channels:
            raise ValueError(f"ConvFuser expects inputs with channels {self.in_channels}, got {channels}")
        sizes = {tuple(x.shape[-2:]) for x in inputs}
        if len(sizes) != 1:
            raise ValueError(f"ConvFuser inputs must share one BEV size, got {sorted(sizes)}")
        return super().forward(torch.cat(inputs, dim=1))
