"""Voxel feature encoders: voxels [V, K, C] -> one feature vector per voxel [V, C]."""

from __future__ import annotations

import torch
from torch import nn


class MeanVFE(nn.Module):
    """Mean of the (first `num_features` channels of the) points in each voxel; no parameters."""

    def __init__(self, num_features: int = 5) -> None:
        super().__init__()
        self.num_features = num_features

    @property
    def out_channels(self) -> int:
        return self.num_features

    def forward(self, voxels: torch.Tensor, num_points: torch.Tensor) -> torch.Tensor:
        """voxels [V, K, C] zero-padded, num_points [V] -> [V, num_features]."""
        if voxels.dim() != 3 or voxels.shape[2] < self.num_features:
            raise ValueError(
                f"voxels must be [V, K, C] with C >= {self.num_features}, got {tuple(voxels.shape)}"
            )
        total = voxels[:, :, : self.num_features].sum(dim=1)
        count = num_points.clamp(min=1).to(voxels.dtype).unsqueeze(1)
        return total / count
