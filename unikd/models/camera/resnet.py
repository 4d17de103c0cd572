"""ResNet-18/50 image backbones (torchvision's layout and parameter names) and ImageNet loading.

Module names equal torchvision's (`conv1`, `bn1`, `layer1.0.conv1`, ..., `downsample.0/1`), so a
torchvision ImageNet state dict loads key for key. The 3x3 convolution of a Bottleneck carries
the stride (ResNet v1.5, as torchvision).
"""

from __future__ import annotations

import os

import torch
from torch import nn

STAGE_STRIDES = (4, 8, 16, 32)  # output stride of layer1..layer4


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_channels: int, width: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, width * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


ARCHITECTURES: dict[int, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, ...]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    50: (Bottleneck, (3, 4, 6, 3)),
}


class ResNet(nn.Module):
    """ResNet returning the outputs of the stages in `out_indices` (0 = layer1, stride 4 ... 3 = layer4, stride 32).

    Only the stages up to `max(out_indices)` are built. `base_width` (64 in torchvision)
    scales every stage, so a narrow network is possible for small CPU runs.
    """

    def __init__(self, depth: int = 50, out_indices: tuple[int, ...] = (1, 2, 3), base_width: int = 64):
        super().__init__()
        if depth not in ARCHITECTURES:
            raise ValueError(f"ResNet depth must be one of {sorted(ARCHITECTURES)}, got {depth}")
        if (
            not out_indices
            or list(out_indices) != sorted(set(out_indices))
            or not 0 <= out_indices[0] <= out_indices[-1] <= 3
        ):
            raise ValueError(f"out_indices must be increasing stage indices in 0..3, got {out_indices}")
        block, num_blocks = ARCHITECTURES[depth]
        self.out_indices = tuple(out_indices)
        self.conv1 = nn.Conv2d(3, base_width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_channels = base_width
        stage_channels = []
        for stage in range(self.out_indices[-1] + 1):
            width = base_width * 2**stage
            layer, in_channels = self._make_layer(
                block, in_channels, width, num_blocks[stage], 1 if stage == 0 else 2
            )
            self.add_module(f"layer{stage + 1}", layer)
            stage_channels.append(in_channels)
        self.out_channels = [stage_channels[i] for i in self.out_indices]
        self.out_strides = [STAGE_STRIDES[i] for i in self.out_indices]
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    @staticmethod
    def _make_layer(
        block: type[BasicBlock] | type[Bottleneck], in_channels: int, width: int, num_blocks: int, stride: int
    ) -> tuple[nn.Sequential, int]:
        out_channels = width * block.expansion
        downsample = None
        if stride != 1 or in_channels != out_channels:
            downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        blocks = [block(in_channels, width, stride, downsample)]
        blocks += [block(out_channels, width) for _ in range(num_blocks - 1)]
        return nn.Sequential(*blocks), out_channels

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Stage outputs for `out_indices`, each [N, C_i, H / s_i, W / s_i]."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for stage in range(self.out_indices[-1] + 1):
            x = getattr(self, f"layer{stage + 1}")(x)
            if stage in self.out_indices:
                outs.append(x)
        return outs


def load_torchvision_state_dict(model: ResNet, path: str | os.PathLike) -> None:
    """Load a torchvision-format ImageNet ResNet state dict from a local file into `model`.

    Ignored: `fc.*` and the stages the model does not build (beyond `max(out_indices)`);
    `num_batches_tracked` may be absent (old torchvision files lack it). Every other key of
    the model must be present with the same shape and no other key may be in the file,
    else a ValueError lists the missing, unexpected and mis-shaped keys.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict (name -> tensor), got {type(state).__name__}")
    built_layers = {f"layer{stage + 1}" for stage in range(model.out_indices[-1] + 1)}

    def skipped(key: str) -> bool:
        head = key.split(".")[0]
        return head == "fc" or (head.startswith("layer") and head not in built_layers)

    own = model.state_dict()
    state = {key: value for key, value in state.items() if not skipped(key)}
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    mis_shaped = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in state
        if k in own and state[k].shape != own[k].shape
    ]
    if missing or unexpected or mis_shaped:
        raise ValueError(
            f"{path} does not match the ResNet: missing {missing}, unexpected {unexpected}, mis-shaped {mis_shaped}"
        )
    for key in own:
        state.setdefault(key, own[key])
    model.load_state_dict(state, strict=True)
