"""VeXKD's modality-general fusion module (MGFM): learnable BEV queries fuse the modality BEV maps.

One learnable query per cell of the fused H x W grid, with a learned positional embedding (a row and a
column embedding, concatenated), goes through `num_blocks` `DeformableBlock`s: deformable cross-modal
attention in which every query attends symmetrically to all modality maps (offsets and weights per
query, head, modality and point, reference point at the query's own cell, one softmax over both
modalities' points), deformable self-attention over the query map, FFN. The updated query map
(`FusionOutput.queries`, [B, E, H, W]) is the fusion's byproduct that query-guided masks read; a
1x1 conv + BN + ReLU of it is the fused BEV (`FusionOutput.bev`, [B, out_channels, H, W]).

A modality may be missing: an input given as None gets no attention, and the other's weights are
renormalised (the result is attending to the present modality alone). `modality_dropout` p removes,
in training only, one modality chosen at random from a sample with probability p in the same way
(never both).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from unikd.models.deformable import DeformableBlock


class FusionOutput(NamedTuple):
    """The fused BEV [B, C, H, W] and the updated query map [B, E, H, W] it was projected from."""

    bev: torch.Tensor
    queries: torch.Tensor


class ModalityGeneralFusion(nn.Module):
    """MGFM (module doc): inputs in the order of `in_channels` (e.g. [camera, lidar]), any resolution
    each (sampling is in normalised coordinates), fused onto the `grid_size` (H, W) query grid."""

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int,
        grid_size: tuple[int, int],
        embed_dims: int = 128,
        num_heads: int = 8,
        num_points: int = 4,
        num_blocks: int = 3,
        ffn_channels: int | None = None,
        modality_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if len(in_channels) < 2:
            raise ValueError(f"MGFM fuses at least two modalities, got in_channels {list(in_channels)}")
        if not 0.0 <= modality_dropout <= 1.0:
            raise ValueError(f"modality_dropout is a probability in [0, 1], got {modality_dropout}")
        self.in_channels = list(in_channels)
        self.grid_size = (int(grid_size[0]), int(grid_size[1]))
        self.embed_dims = embed_dims
        self.modality_dropout = modality_dropout
        height, width = self.grid_size
        self.queries = nn.Parameter(torch.randn(height * width, embed_dims))
        self.row_embed = nn.Parameter(torch.randn(height, embed_dims // 2))
        self.col_embed = nn.Parameter(torch.randn(width, embed_dims - embed_dims // 2))
        self.blocks = nn.ModuleList(
            DeformableBlock(embed_dims, self.in_channels, num_heads, num_points, ffn_channels)
            for _ in range(num_blocks)
        )
        self.output = nn.Sequential(
            nn.Conv2d(embed_dims, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def position(self) -> torch.Tensor:
        """[H * W, E]: cell (i, j) gets [col_embed[j], row_embed[i]]."""
        height, width = self.grid_size
        cols = self.col_embed[None].expand(height, -1, -1)
        rows = self.row_embed[:, None].expand(-1, width, -1)
        return torch.cat([cols, rows], dim=-1).flatten(0, 1)

    def presence(self, inputs: Sequence[torch.Tensor | None]) -> torch.Tensor:
        """[B, L] bool: which modality each sample has, after modality dropout in training."""
        given = [x for x in inputs if x is not None]
        if not given:
            raise ValueError("MGFM needs at least one modality BEV; all inputs are None")
        batch, device = given[0].shape[0], given[0].device
        present = torch.tensor([x is not None for x in inputs], device=device).expand(batch, -1).clone()
        if self.training and self.modality_dropout > 0:
            drop = (torch.rand(batch, device=device) < self.modality_dropout) & (present.sum(dim=1) > 1)
            choice = torch.multinomial(present.float(), 1).squeeze(1)  # one present modality per sample
            present[drop, choice[drop]] = False
        return present

    def forward(self, inputs: Sequence[torch.Tensor | None]) -> FusionOutput:
        """Fuse modality BEV maps [B, C_l, H_l, W_l] (None: the modality is missing for the batch)."""
        if len(inputs) != len(self.in_channels):
            raise ValueError(f"MGFM expects {len(self.in_channels)} inputs, got {len(inputs)}")
        channels = [None if x is None else x.shape[1] for x in inputs]
        expected = [c if x is not None else None for c, x in zip(self.in_channels, inputs, strict=True)]
        if channels != expected:
            raise ValueError(
                f"MGFM expects inputs with channels {self.in_channels} (None: missing), got {channels}"
            )
        present = self.presence(inputs)
        batch = present.shape[0]
        if any(x.shape[0] != batch for x in inputs if x is not None):
            raise ValueError(
                f"MGFM inputs must share one batch size, got {[None if x is None else x.shape[0] for x in inputs]}"
            )
        queries = self.queries[None].expand(batch, -1, -1)
        position = self.position()
        for block in self.blocks:
            queries = block(queries, self.grid_size, inputs, position, present)
        query_map = queries.transpose(1, 2).reshape(batch, self.embed_dims, *self.grid_size)
        return FusionOutput(self.output(query_map), query_map)
