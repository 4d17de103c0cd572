"""ConvFuser: concatenate modality BEV maps and mix them with conv3x3 + BN + ReLU (BEVFusion).

With `channel_attention` the concatenation is first gated per channel by sigmoid(1x1 conv of its
global average), UniDistill's FusionEncoder (`att`, then `reduce_conv`).

`build_fuser` builds a detector's fuser from its configuration: `config["fuser"]["type"]` names a fuser of
the `FUSERS` registry (`unikd.models.registry`), "conv" when `fuser` is absent. Registered here: "conv" (this
ConvFuser, from `fuser_channels` and `fuser_attention`) and "mgfm" (`unikd.models.mgfm.ModalityGeneralFusion`
to `fuser_channels`, its settings the other keys of `fuser`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from unikd.models.mgfm import ModalityGeneralFusion
from unikd.models.registry import FUSERS


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

    def forward(self, inputs: Sequence[torch.Tensor | None]) -> torch.Tensor:
        """Fuse BEV maps given in the order of `in_channels` (e.g. [camera, lidar]) on the same grid.

        A missing modality (None) enters as a zero map: the convolution has no notion of absence."""
        if len(inputs) != len(self.in_channels):
            raise ValueError(f"ConvFuser expects {len(self.in_channels)} inputs, got {len(inputs)}")
        given = next((x for x in inputs if x is not None), None)
        if given is None:
            raise ValueError("ConvFuser needs at least one modality BEV; all inputs are None")
        inputs = [
            given.new_zeros(given.shape[0], channels, *given.shape[-2:]) if x is None else x
            for channels, x in zip(self.in_channels, inputs, strict=True)
        ]
        channels = [x.shape[1] for x in inputs]
        if channels != self.in_channels:
            raise ValueError(f"ConvFuser expects inputs with channels {self.in_channels}, got {channels}")
        sizes = {tuple(x.shape[-2:]) for x in inputs}
        if len(sizes) != 1:
            raise ValueError(f"ConvFuser inputs must share one BEV size, got {sorted(sizes)}")
        return super().forward(torch.cat(inputs, dim=1))


def build_fuser(in_channels: Sequence[int], config: dict, grid_size: tuple[int, int]) -> nn.Module:
    """The fuser of a detector `config` (module doc) for inputs of `in_channels` on a `grid_size` BEV."""
    settings = dict(config.get("fuser", {"type": "conv"}))
    return FUSERS.build(settings.pop("type", None), in_channels, config, grid_size, **settings)


@FUSERS.register("conv")
def conv_fuser(in_channels: Sequence[int], config: dict, grid_size: tuple[int, int], **settings) -> ConvFuser:
    """BEVFusion's ConvFuser (UniDistill's FusionEncoder with `fuser_attention`)."""
    if settings:
        raise ValueError(
            "config 'fuser' of type 'conv' takes no settings (a ConvFuser's are fuser_channels and "
            f"fuser_attention), got {sorted(settings)}"
        )
    return ConvFuser(in_channels, config["fuser_channels"], config.get("fuser_attention", False))


@FUSERS.register("mgfm")
def mgfm_fuser(
    in_channels: Sequence[int], config: dict, grid_size: tuple[int, int], **settings
) -> ModalityGeneralFusion:
    """VeXKD's modality-general fusion module, its settings those of `fuser`."""
    if config.get("fuser_attention", False):
        raise ValueError("fuser_attention is a ConvFuser setting; config 'fuser' has type 'mgfm'")
    try:
        return ModalityGeneralFusion(in_channels, config["fuser_channels"], grid_size, **settings)
    except TypeError as error:
        raise TypeError(f"config 'fuser' (mgfm): settings {sorted(settings)}: {error}") from error
