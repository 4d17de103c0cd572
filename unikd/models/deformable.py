"""Deformable attention of a BEV query map (Deformable DETR / BEVFormer style) and the transformer block
built from it, shared by the modality-general fusion module and the query-guided mask generator.

Queries are [B, N, E] for the N = H * W cells of a query map in row-major order; each query's
reference point is its own cell centre (`unikd.ops.deformable_attention.cell_centres`). Per query,
head, map and point, a linear layer predicts a sampling offset (in cells of that map, x along
columns, y along rows) and an attention logit; the logits are normalised by one softmax over all
maps and points of a head, so the maps compete for each query's attention.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from unikd.ops.deformable_attention import cell_centres, deformable_sample


class DeformableAttention(nn.Module):
    """Multi-head deformable attention of queries over one or more value maps.

    `value_channels[l]` is map l's channel count (each map has its own 1x1 value projection to the
    query width). A map that is None, or absent for a sample (`present[b, l]` False), gets no
    attention: the softmax runs over the other maps' points only, so the result equals attending to
    those maps alone.
    """

    def __init__(
        self, embed_dims: int, value_channels: Sequence[int], num_heads: int = 8, num_points: int = 4
    ):
        super().__init__()
        if embed_dims % num_heads:
            raise ValueError(f"embed_dims {embed_dims} must be divisible by num_heads {num_heads}")
        self.embed_dims, self.num_heads, self.num_points = embed_dims, num_heads, num_points
        self.num_maps = len(value_channels)
        self.value_projs = nn.ModuleList(nn.Conv2d(channels, embed_dims, 1) for channels in value_channels)
        self.sampling_offsets = nn.Linear(embed_dims, num_heads * self.num_maps * num_points * 2)
        self.attention_weights = nn.Linear(embed_dims, num_heads * self.num_maps * num_points)
        self.output_proj = nn.Linear(embed_dims, embed_dims)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable DETR's start: head h's points on a ray at angle 2 pi h / heads, 1, 2, ... cells out;
        uniform attention; Xavier projections."""
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.num_heads, dtype=torch.float32) * (2 * math.pi / self.num_heads)
        rays = torch.stack([angles.cos(), angles.sin()], dim=-1)
        rays = rays / rays.abs().max(dim=-1, keepdim=True).values
        steps = torch.arange(1, self.num_points + 1, dtype=torch.float32)
        bias = rays[:, None, None, :] * steps[None, None, :, None]  # [heads, 1, P, 2]
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(bias.expand(-1, self.num_maps, -1, -1).flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for layer in (*self.value_projs, self.output_proj):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(
        self,
        queries: torch.Tensor,
        reference: torch.Tensor,
        values: Sequence[torch.Tensor | None],
        present: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """queries [B, N, E] (positional embedding included), reference [N, 2] normalised (x, y),
        values: per map [B, C_l, H_l, W_l] or None, present [B, L] bool (default: the maps given;
        it must leave every sample a map). Returns [B, N, E]."""
        batch, count, _ = queries.shape
        if len(values) != self.num_maps:
            raise ValueError(f"expected {self.num_maps} value maps, got {len(values)}")
        if all(value is None for value in values):
            raise ValueError("deformable attention needs at least one value map")
        available = torch.tensor([value is not None for value in values], device=queries.device)
        available = available.expand(batch, -1) if present is None else available & present
        heads, maps, points = self.num_heads, self.num_maps, self.num_points
        sizes = torch.tensor(
            [[1.0, 1.0] if value is None else [value.shape[-1], value.shape[-2]] for value in values],
            device=queries.device,
        )  # (W, H) of each map: offsets are in its cells
        offsets = self.sampling_offsets(queries).view(batch, count, heads, maps, points, 2)
        locations = reference[None, :, None, None, None, :] + offsets / sizes[None, None, None, :, None, :]
        logits = self.attention_weights(queries).view(batch, count, heads, maps, points)
        logits = logits.masked_fill(~available[:, None, None, :, None], float("-inf"))
        weights = logits.flatten(3).softmax(dim=-1).view_as(logits)
        depth = self.embed_dims // heads
        projected = [
            None if value is None else proj(value).view(batch, heads, depth, *value.shape[-2:])
            for proj, value in zip(self.value_projs, values, strict=True)
        ]
        return self.output_proj(deformable_sample(projected, locations, weights))


class DeformableBlock(nn.Module):
    """Deformable cross-attention into value maps, deformable self-attention over the query map, FFN;
    each sub-layer residual and followed by a LayerNorm (post-norm). The positional embedding is added
    to the queries that predict offsets and weights, not to the values."""

    def __init__(
        self,
        embed_dims: int,
        value_channels: Sequence[int],
        num_heads: int = 8,
        num_points: int = 4,
        ffn_channels: int | None = None,
    ):
        super().__init__()
        self.cross_attention = DeformableAttention(embed_dims, value_channels, num_heads, num_points)
        self.self_attention = DeformableAttention(embed_dims, [embed_dims], num_heads, num_points)
        ffn_channels = ffn_channels or 2 * embed_dims
        self.ffn = nn.Sequential(
            nn.Linear(embed_dims, ffn_channels), nn.ReLU(inplace=True), nn.Linear(ffn_channels, embed_dims)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(embed_dims) for _ in range(3))

    def forward(
        self,
        queries: torch.Tensor,
        size: tuple[int, int],
        values: Sequence[torch.Tensor | None],
        position: torch.Tensor | None = None,
        present: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """queries [B, H * W, E] of an H x W query map (`size`), position [H * W, E] or None,
        values and present as `DeformableAttention`. Returns the updated queries [B, H * W, E]."""
        height, width = size
        reference = cell_centres(height, width, queries.device)
        position = 0 if position is None else position
        x = self.norms[0](queries + self.cross_attention(queries + position, reference, values, present))
        query_map = x.transpose(1, 2).reshape(x.shape[0], -1, height, width)
        x = self.norms[1](x + self.self_attention(x + position, reference, [query_map]))
        return self.norms[2](x + self.ffn(x))
