"""ConvFuser: concatenate modality BEV maps and mix them with conv3x3 + BN + ReLU (BEVFusion).

With `channel_attention` the concatenation is first gated per channel by sigmoid(1x1 conv of its
global average), UniDistill's FusionEncoder (`att`, then `reduce_conv`).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


class ChannelGate(nn.Sequential):
    """x * sigmoid(conv1x1(avgpool(x))): one weight per sample and channel."""

    def __init__(self, channels: int):
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, channels, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * super().forward(x)


class ConvFuser(nn.Sequential):
    """[B, sum(in_channels), H, W] concatenation of the inputs -> [B, out_channels, H, W].

    Parameters: `0` (conv), `1` (BN), and `attention` (the `ChannelGate`, applied before them) when
    `channel_attention`.
    """

    def __init__(self, in_channels: list[int], out_channels: int = 256, channel_attention: bool = False):
        layers = OrderedDict()
        if channel_attention:
            layers["attention"] = ChannelGate(sum(in_channels))
        layers["0"] = nn.Conv2d(sum(in_channels), out_channels, 3, padding=1, bias=False)
        layers["1"] = nn.BatchNorm2d(out_channels)
        layers["2"] = nn.ReLU(inplace=True)
        super().__init__(layers)
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
