"""BEV decoder: SECOND backbone (multi-scale 2D convolutions) and SECONDFPN neck.

All maps are [B, C, H, W] with rows along y and columns along x. Output cell j of a stride-s stage
(3x3 kernel, padding 1) is centred on input cell s*j; the neck's stride-s transposed convolution
sends cell j back to cells s*j .. s*j + s - 1, so a feature stays where it was on every level.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

BN_EPS = 1e-3
BN_MOMENTUM = 0.01


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM),
        nn.ReLU(inplace=True),
    ]


class SECOND(nn.Module):
    """Stages of 3x3 conv + BN + ReLU; stage i starts with a stride `layer_strides[i]` conv to
    `out_channels[i]` followed by `layer_nums[i]` stride-1 convs. Returns every stage's output."""

    def __init__(
        self,
        in_channels: int = 256,
        out_channels: Sequence[int] = (128, 256),
        layer_nums: Sequence[int] = (5, 5),
        layer_strides: Sequence[int] = (1, 2),
    ) -> None:
        super().__init__()
        if not len(out_channels) == len(layer_nums) == len(layer_strides):
            raise ValueError(
                f"out_channels {tuple(out_channels)}, layer_nums {tuple(layer_nums)} and layer_strides "
                f"{tuple(layer_strides)} must have one entry per stage"
            )
        self.in_channels = in_channels
        self.out_channels = tuple(out_channels)
        self.layer_strides = tuple(layer_strides)
        stages = []
        channels = in_channels
        for out, num, stride in zip(out_channels, layer_nums, layer_strides, strict=True):
            layers = _conv_bn_relu(channels, out, stride)
            for _ in range(num):
                layers += _conv_bn_relu(out, out)
            stages.append(nn.Sequential(*layers))
            channels = out
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[B, in_channels, H, W] -> [B, out_channels[i], H / prod(strides[:i+1]), ...] for each stage i."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"SECOND expects [B, {self.in_channels}, H, W], got {tuple(x.shape)}")
        outputs = []
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        return outputs


class SECONDFPN(nn.Module):
    """Bring each level to the first level's resolution and concatenate: [B, sum(out_channels), H, W].

    Level i goes through a (transposed) convolution by `upsample_strides[i]` + BN + ReLU: a stride s > 1
    is a transposed conv with kernel s and stride s, s == 1 a 1x1 conv, s < 1 a conv with kernel and
    stride round(1 / s). `out_channels` here is the concatenated channel count.

    When the first level's size is not divisible by a level's stride (e.g. 135 cells: stride 2 gives 68,
    upsampled to 136), the upsampled map is cropped at its far (bottom, right) edge, which keeps every
    cell where it was (module doc); a larger disagreement is an error.
    """

    def __init__(
        self,
        in_channels: Sequence[int] = (128, 256),
        out_channels: Sequence[int] = (256, 256),
        upsample_strides: Sequence[float] = (1, 2),
    ) -> None:
        super().__init__()
        if not len(in_channels) == len(out_channels) == len(upsample_strides):
            raise ValueError(
                f"in_channels {tuple(in_channels)}, out_channels {tuple(out_channels)} and upsample_strides "
                f"{tuple(upsample_strides)} must have one entry per level"
            )
        self.in_channels = tuple(in_channels)
        self.out_channels = sum(out_channels)
        blocks = []
        for in_ch, out_ch, stride in zip(in_channels, out_channels, upsample_strides, strict=True):
            if stride <= 0:
                raise ValueError(f"upsample strides must be positive, got {tuple(upsample_strides)}")
            if stride > 1:
                if stride != int(stride):
                    raise ValueError(f"an upsample stride above 1 must be an integer, got {stride}")
                conv = nn.ConvTranspose2d(in_ch, out_ch, int(stride), stride=int(stride), bias=False)
            else:
                step = round(1 / stride)
                conv = nn.Conv2d(in_ch, out_ch, step, stride=step, bias=False)
            blocks.append(
                nn.Sequential(
                    conv, nn.BatchNorm2d(out_ch, eps=BN_EPS, momentum=BN_MOMENTUM), nn.ReLU(inplace=True)
                )
            )
        self.blocks = nn.ModuleList(blocks)
        self.upsample_strides = tuple(upsample_strides)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Per-level maps (e.g. SECOND's outputs) -> [B, out_channels, H, W] at the first level's size."""
        if len(features) != len(self.blocks):
            raise ValueError(f"SECONDFPN expects {len(self.blocks)} levels, got {len(features)}")
        outputs = [block(x) for block, x in zip(self.blocks, features, strict=True)]
        height, width = outputs[0].shape[2:]
        for level, (out, stride) in enumerate(zip(outputs, self.upsample_strides, strict=True)):
            excess_h, excess_w = out.shape[2] - height, out.shape[3] - width
            if not (0 <= excess_h < max(stride, 1) and 0 <= excess_w < max(stride, 1)):
                raise ValueError(
                    f"levels do not align after up/downsampling: input sizes "
                    f"{[tuple(x.shape[2:]) for x in features]} -> {[tuple(o.shape[2:]) for o in outputs]}"
                )
            outputs[level] = out[:, :, :height, :width]
        return torch.cat(outputs, dim=1)
