"""Sparse 3D convolutional encoder (BEVFusion / mmdet3d `SparseEncoder` style): voxels -> BEV.

Sparse tensors index voxels as (batch, z, y, x) and have spatial shape (D, H, W) = (z, y, x). The
output is the dense [B, C, D, H, W] volume with depth folded into channels: [B, C * D, H, W], rows
along y and columns along x, covering the point cloud range (see `bev_grid`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from unikd.ops.bev_grid import BEVGrid
from unikd.ops.spconv_compat import SparseConv3d, SubMConv3d, spconv
from unikd.ops.voxelize import grid_size

BN_EPS = 1e-3
BN_MOMENTUM = 0.01


def _triple(value: int | Sequence[int]) -> tuple[int, int, int]:
    if isinstance(value, int):
        return value, value, value
    if len(value) != 3:
        raise ValueError(f"expected an int or a (z, y, x) triple, got {value!r}")
    return int(value[0]), int(value[1]), int(value[2])


def _norm(channels: int) -> nn.BatchNorm1d:
    return nn.BatchNorm1d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class SparseBasicBlock(spconv.SparseModule):
    """Residual block of two 3x3x3 submanifold convolutions: relu(x + bn(conv(relu(bn(conv(x))))))."""

    def __init__(self, channels: int, indice_key: str) -> None:
        super().__init__()
        self.conv1 = SubMConv3d(channels, channels, 3, padding=1, bias=False, indice_key=indice_key)
        self.bn1 = _norm(channels)
        self.conv2 = SubMConv3d(channels, channels, 3, padding=1, bias=False, indice_key=indice_key)
        self.bn2 = _norm(channels)

    def forward(self, x: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
        out = self.conv1(x)
        out = out.replace_feature(torch.relu(self.bn1(out.features)))
        out = self.conv2(out)
        return out.replace_feature(torch.relu(self.bn2(out.features) + x.features))


class SparseEncoder(nn.Module):
    """conv_input (SubM conv) -> stages -> conv_out (strided along z) -> dense BEV [B, C * D, H, W].

    `encoder_channels[i]` lists the layers of stage i: every entry but the last is a residual
    SubM block (so it must equal the incoming channels); the last entry of every stage except the
    final one is a 3x3x3 stride-2 SparseConv3d to that many channels, padded by
    `downsample_paddings[i]` (an int or (z, y, x)); the final stage has only SubM blocks.
    The sparse shape is (nz + 1, ny, nx) for the voxel grid of `point_cloud_range` / `voxel_size`
    (the extra z layer is the usual mmdet3d convention). The defaults are the BEVFusion nuScenes
    LiDAR encoder: sparse shape (41, 1440, 1440) -> [B, 256, 180, 180], BEV cells of 0.6 m.
    """

    def __init__(
        self,
        in_channels: int = 5,
        point_cloud_range: Sequence[float] = (-54.0, -54.0, -5.0, 54.0, 54.0, 3.0),
        voxel_size: Sequence[float] = (0.075, 0.075, 0.2),
        base_channels: int = 16,
        encoder_channels: Sequence[Sequence[int]] = ((16, 16, 32), (32, 32, 64), (64, 64, 128), (128, 128)),
        downsample_paddings: Sequence[int | Sequence[int]] = (1, 1, (0, 1, 1)),
        output_channels: int = 128,
    ) -> None:
        super().__init__()
        if len(downsample_paddings) != len(encoder_channels) - 1:
            raise ValueError(
                f"need one downsample padding per stage but the last ({len(encoder_channels) - 1}), "
                f"got {len(downsample_paddings)}"
            )
        self.point_cloud_range = tuple(float(v) for v in point_cloud_range)
        self.voxel_size = tuple(float(v) for v in voxel_size)
        nx, ny, nz = grid_size(self.voxel_size, self.point_cloud_range)
        self.sparse_shape = (nz + 1, ny, nx)

        self.conv_input = spconv.SparseSequential(
            SubMConv3d(in_channels, base_channels, 3, padding=1, bias=False, indice_key="subm1"),
            _norm(base_channels),
            nn.ReLU(),
        )
        shape = self.sparse_shape
        channels = base_channels
        stages = []
        for i, layers in enumerate(encoder_channels):
            last_stage = i == len(encoder_channels) - 1
            num_blocks = len(layers) if last_stage else len(layers) - 1
            blocks = []
            for out_channels in layers[:num_blocks]:
                if out_channels != channels:
                    raise ValueError(
                        f"stage {i}: a residual SubM block keeps its channels ({channels}), "
                        f"got {out_channels} in encoder_channels {encoder_channels}"
                    )
                blocks.append(SparseBasicBlock(channels, indice_key=f"subm{i + 1}"))
            if not last_stage:
                padding = _triple(downsample_paddings[i])
                out_channels = layers[-1]
                blocks += [
                    SparseConv3d(channels, out_channels, 3, stride=2, padding=padding, bias=False),
                    _norm(out_channels),
                    nn.ReLU(),
                ]
                channels = out_channels
                shape = tuple((n + 2 * p - 3) // 2 + 1 for n, p in zip(shape, padding, strict=True))
            stages.append(spconv.SparseSequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.conv_out = spconv.SparseSequential(
            SparseConv3d(channels, output_channels, (3, 1, 1), stride=(2, 1, 1), bias=False),
            _norm(output_channels),
            nn.ReLU(),
        )
        depth = (shape[0] - 3) // 2 + 1
        if depth < 1 or min(shape[1:]) < 1:
            raise ValueError(f"sparse shape {self.sparse_shape} is too small for this encoder (-> {shape})")

        self.bev_stride = 2 ** (len(encoder_channels) - 1)
        stride = self.bev_stride
        if ny % stride or nx % stride or tuple(shape[1:]) != (ny // stride, nx // stride):
            raise ValueError(
                f"the voxel grid (y={ny}, x={nx}) must divide into BEV cells of {self.bev_stride} voxels "
                f"(got a BEV of {shape[1:]}); choose a range and voxel size that do"
            )
        self.output_shape = (output_channels, depth, shape[1], shape[2])  # (C, D, H, W)

    @property
    def out_channels(self) -> int:
        """Channels of the BEV output: output_channels * D."""
        return self.output_shape[0] * self.output_shape[1]

    @property
    def bev_shape(self) -> tuple[int, int]:
        """(H, W) of the BEV output: rows along y, columns along x."""
        return self.output_shape[2], self.output_shape[3]

    @property
    def bev_cell_size(self) -> tuple[float, float]:
        """Metric (x, y) size of one BEV cell: voxel size times `bev_stride`."""
        return self.voxel_size[0] * self.bev_stride, self.voxel_size[1] * self.bev_stride

    @property
    def bev_grid(self) -> BEVGrid:
        """The metric region and resolution of the BEV output."""
        x_min, y_min, _, x_max, y_max, _ = self.point_cloud_range
        return BEVGrid(x_min, y_min, x_max, y_max, height=self.bev_shape[0], width=self.bev_shape[1])

    def forward(self, voxel_features: torch.Tensor, coords: torch.Tensor, batch_size: int) -> torch.Tensor:
        """voxel_features [V, C_in], coords [V, 4] int (batch, z, y, x) -> BEV [B, C * D, H, W]."""
        if coords.dim() != 2 or coords.shape[1] != 4 or coords.shape[0] != voxel_features.shape[0]:
            raise ValueError(
                f"coords must be [V, 4] (batch, z, y, x) matching voxel_features {tuple(voxel_features.shape)}, "
                f"got {tuple(coords.shape)}"
            )
        limits = coords.new_tensor(self.sparse_shape)
        if bool(((coords[:, 1:] < 0) | (coords[:, 1:] >= limits)).any()):
            raise ValueError(f"coords (z, y, x) must lie inside the sparse shape {self.sparse_shape}")
        x = spconv.SparseConvTensor(voxel_features, coords.int(), list(self.sparse_shape), batch_size)
        x = self.conv_input(x)
        for stage in self.stages:
            x = stage(x)
        x = self.conv_out(x)

        channels, depth, height, width = self.output_shape
        dense = x.features.new_zeros((batch_size, channels, depth, height, width))
        index = x.indices.long()
        dense[index[:, 0], :, index[:, 1], index[:, 2], index[:, 3]] = x.features
        return dense.view(batch_size, channels * depth, height, width)
