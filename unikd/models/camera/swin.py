"""Swin Transformer image backbone, module for module mmdet 3.x's `SwinTransformer` (BEVFusion's Swin-T).

Every module and parameter has mmdet's name and shape, so an mmdet (or mmdet3d BEVFusion `img_backbone.`)
state dict loads by key alone:

    patch_embed.projection.{weight,bias}       Conv2d(3, C, 4, stride 4)
    patch_embed.norm.{weight,bias}             LayerNorm(C)
    stages.{i}.blocks.{j}.norm1 / norm2        LayerNorm
    stages.{i}.blocks.{j}.attn.w_msa.relative_position_bias_table   [(2w - 1)^2, heads]
    stages.{i}.blocks.{j}.attn.w_msa.relative_position_index        [w^2, w^2] (a buffer in the state dict)
    stages.{i}.blocks.{j}.attn.w_msa.qkv / proj                     Linear (qkv: q, k, v blocks of C rows)
    stages.{i}.blocks.{j}.ffn.layers.0.0 / ffn.layers.1             Linear C -> r C, Linear r C -> C
    stages.{i}.downsample.norm / reduction                          LayerNorm(4 C_i), Linear(4 C_i, 2 C_i)
    norm{i}                                    LayerNorm of each output stage i

What mmdet does and this module keeps: tokens are padded with zeros at the bottom and right to a multiple
of the window (after `norm1`; the padded tokens take part in the attention, unmasked) and, when the map
is smaller than the window, still padded to one window and shifted (the original Swin shrinks the window
instead); the shifted blocks (odd j) roll by w // 2 toward the top-left and mask pairs from different
regions of the rolled map with -100 (not -inf); odd-sized maps are padded at the bottom and right before
the patch embedding (to a multiple of 4) and before each patch merging (to even).

Patch merging concatenates each 2 x 2 block of tokens in nn.Unfold's order: merged channel
`c * 4 + 2 * dy + dx` holds channel c of the token at (dy, dx) of the block. The original Swin
(microsoft/Swin-Transformer) concatenates x0 = (0, 0), x1 = (1, 0), x2 = (0, 1), x3 = (1, 1), channel
`k * C + c`: an original checkpoint's `layers.{i}.downsample.reduction.weight` [2C, 4C] and
`downsample.norm.*` [4C] take the permutation of mmdet's `swin_converter` (also `attn.` -> `attn.w_msa.`,
`mlp.fc1` -> `ffn.layers.0.0`, `mlp.fc2` -> `ffn.layers.1`, `layers` -> `stages`, `patch_embed.proj` ->
`patch_embed.projection`).

Stochastic depth (`drop_path_rate`, rising linearly over the blocks from 0, as mmdet) is active in training only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

SHIFTED_MASK_VALUE = -100.0


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Zero whole samples of `x` [B, ...] with probability `rate`, the others scaled by 1 / (1 - rate)."""
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    return x * mask / keep


def relative_position_index(window: int) -> torch.Tensor:
    """[w^2, w^2]: row of the bias table for the pair (query p, key q) of a window, tokens in row-major
    order; the table is indexed by the offset (dy, dx) = p - q as (dy + w - 1) * (2w - 1) + dx + w - 1."""
    rows, cols = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    rows, cols = rows.flatten(), cols.flatten()
    dy = rows[:, None] - rows[None, :] + window - 1
    dx = cols[:, None] - cols[None, :] + window - 1
    return dy * (2 * window - 1) + dx


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """[B, H, W, C] (H, W multiples of `window`) -> [B * nH * nW, w * w, C], windows in row-major order."""
    batch, height, width, channels = x.shape
    x = x.view(batch, height // window, window, width // window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, channels)


def window_merge(windows: torch.Tensor, window: int, height: int, width: int) -> torch.Tensor:
    """Inverse of `window_partition`: [B * nH * nW, w * w, C] -> [B, H, W, C]."""
    channels = windows.shape[-1]
    x = windows.view(-1, height // window, width // window, window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, channels)


def shifted_window_mask(
    height: int, width: int, window: int, shift: int, device: torch.device
) -> torch.Tensor:
    """[nW, w^2, w^2] additive mask of the rolled [height, width] map: 0 within a region, -100 across.

    The regions are [0, H - w), [H - w, H - shift), [H - shift, H) along each axis (the rolled-in strip
    and the strip next to it are not neighbours in the image)."""
    labels = torch.zeros(height, width, device=device)
    bounds = ((0, -window), (-window, -shift), (-shift, None))
    label = 0
    for row_start, row_stop in bounds:
        for col_start, col_stop in bounds:
            labels[row_start:row_stop, col_start:col_stop] = label
            label += 1
    windows = window_partition(labels.view(1, height, width, 1), window)[..., 0]  # [nW, w^2]
    different = windows[:, None, :] != windows[:, :, None]
    return torch.zeros(different.shape, device=device).masked_fill(different, SHIFTED_MASK_VALUE)


class WindowMSA(nn.Module):
    """Multi-head self-attention within windows of w x w tokens, with a learned relative position bias."""

    def __init__(self, embed_dims: int, num_heads: int, window: int, qkv_bias: bool = True):
        super().__init__()
        if embed_dims % num_heads:
            raise ValueError(f"embed_dims {embed_dims} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.window = window
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(embed_dims, 3 * embed_dims, bias=qkv_bias)
        self.proj = nn.Linear(embed_dims, embed_dims)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def position_bias(self) -> torch.Tensor:
        """[heads, w^2, w^2]."""
        size = self.window * self.window
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(size, size, -1).permute(2, 0, 1)

    def forward(self, windows: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """[B * nW, N, C] tokens of each window -> [B * nW, N, C]. `mask`: None or [nW, N, N] additive,
        the same for the windows of every sample."""
        count, tokens, channels = windows.shape
        qkv = self.qkv(windows).view(count, tokens, 3, self.num_heads, channels // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B * nW, heads, N, d]
        bias = self.position_bias()[None]
        if mask is not None:
            bias = (bias + mask[:, None]).repeat(count // len(mask), 1, 1, 1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        return self.proj(out.transpose(1, 2).reshape(count, tokens, channels))


class ShiftWindowMSA(nn.Module):
    """Window attention over a [B, H, W, C] map, its windows shifted by `shift` tokens when shift > 0."""

    def __init__(
        self, embed_dims: int, num_heads: int, window: int, shift: int, qkv_bias: bool, drop_path_rate: float
    ):
        super().__init__()
        if not 0 <= shift < window:
            raise ValueError(f"shift {shift} must be in [0, window {window})")
        self.window, self.shift, self.drop_path_rate = window, shift, drop_path_rate
        self.w_msa = WindowMSA(embed_dims, num_heads, window, qkv_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, height, width, _ = x.shape
        window, shift = self.window, self.shift
        x = F.pad(x, (0, 0, 0, -width % window, 0, -height % window))
        padded_height, padded_width = x.shape[1:3]
        mask = None
        if shift:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
            mask = shifted_window_mask(padded_height, padded_width, window, shift, x.device)
        x = self.w_msa(window_partition(x, window), mask)
        x = window_merge(x, window, padded_height, padded_width)
        if shift:
            x = torch.roll(x, shifts=(shift, shift), dims=(1, 2))
        return drop_path(x[:, :height, :width], self.drop_path_rate, self.training)


class FFN(nn.Module):
    """Linear -> GELU -> Linear (mmcv's FFN with two layers and no dropout: `layers.0.0`, `layers.1`)."""

    def __init__(self, embed_dims: int, hidden_dims: int):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Sequential(nn.Linear(embed_dims, hidden_dims), nn.GELU()), nn.Linear(hidden_dims, embed_dims)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class SwinBlock(nn.Module):
    """x + attention(norm1(x)), then + ffn(norm2(x)) (pre-norm residual block on [B, H, W, C])."""

    def __init__(
        self,
        embed_dims: int,
        num_heads: int,
        hidden_dims: int,
        window: int,
        shift: bool,
        qkv_bias: bool,
        drop_path_rate: float,
    ):
        super().__init__()
        self.drop_path_rate = drop_path_rate
        self.norm1 = nn.LayerNorm(embed_dims)
        self.attn = ShiftWindowMSA(
            embed_dims, num_heads, window, window // 2 if shift else 0, qkv_bias, drop_path_rate
        )
        self.norm2 = nn.LayerNorm(embed_dims)
        self.ffn = FFN(embed_dims, hidden_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + drop_path(self.ffn(self.norm2(x)), self.drop_path_rate, self.training)


class PatchMerging(nn.Module):
    """[B, H, W, C] -> [B, ceil(H / 2), ceil(W / 2), out]: each 2 x 2 block (nn.Unfold's channel order,
    module doc) -> LayerNorm(4C) -> Linear(4C, out) without bias; odd sizes padded at the bottom and right."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * in_channels)
        self.reduction = nn.Linear(4 * in_channels, out_channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, channels = x.shape
        x = F.pad(x, (0, 0, 0, width % 2, 0, height % 2))
        height, width = x.shape[1] // 2, x.shape[2] // 2
        x = x.view(batch, height, 2, width, 2, channels).permute(0, 1, 3, 5, 2, 4)  # [B, H', W', C, dy, dx]
        return self.reduction(self.norm(x.reshape(batch, height, width, 4 * channels)))


class PatchEmbed(nn.Module):
    """Non-overlapping patches: [B, 3, H, W] -> [B, ceil(H / p), ceil(W / p), C] (conv, then LayerNorm)."""

    def __init__(self, in_channels: int, embed_dims: int, patch_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.projection = nn.Conv2d(in_channels, embed_dims, patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = self.patch_size
        x = F.pad(x, (0, -x.shape[-1] % size, 0, -x.shape[-2] % size))
        return self.norm(self.projection(x).permute(0, 2, 3, 1))


class SwinStage(nn.Module):
    """`depth` blocks (every second one shifted), then the patch merging to the next stage (if any)."""

    def __init__(
        self,
        embed_dims: int,
        num_heads: int,
        hidden_dims: int,
        depth: int,
        window: int,
        qkv_bias: bool,
        drop_path_rates: Sequence[float],
        downsample: bool,
    ):
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinBlock(embed_dims, num_heads, hidden_dims, window, j % 2 == 1, qkv_bias, drop_path_rates[j])
            for j in range(depth)
        )
        self.downsample = PatchMerging(embed_dims, 2 * embed_dims) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class SwinTransformer(nn.Module):
    """Swin Transformer returning the stages in `out_indices` as [N, C_i, H / s_i, W / s_i] maps
    (C_i = embed_dims * 2^i, s_i = 4 * 2^i; sizes rounded up where the image is not a multiple).

    Defaults are Swin-T as BEVFusion configures it (window 7, MLP ratio 4, q/k/v biases, patch norm,
    drop path 0.2, stages 1-3 out). One stage per entry of `depths`, as mmdet builds them; the last
    one must be an output (a shallower network has fewer `depths`, so that no parameter goes unused).
    """

    def __init__(
        self,
        embed_dims: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: int = 4,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.2,
        out_indices: Sequence[int] = (1, 2, 3),
        patch_size: int = 4,
    ):
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError(
                f"Swin depths {tuple(depths)} and num_heads {tuple(num_heads)} need one entry per stage"
            )
        if (
            not out_indices
            or list(out_indices) != sorted(set(out_indices))
            or not 0 <= out_indices[0] <= out_indices[-1] == len(depths) - 1
        ):
            raise ValueError(
                f"out_indices must be increasing stage indices ending at the last stage {len(depths) - 1}, got {tuple(out_indices)}"
            )
        self.out_indices = tuple(out_indices)
        self.patch_embed = PatchEmbed(3, embed_dims, patch_size)
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        num_stages = len(depths)
        self.stages = nn.ModuleList()
        for i in range(num_stages):
            channels = embed_dims * 2**i
            self.stages.append(
                SwinStage(
                    channels,
                    num_heads[i],
                    mlp_ratio * channels,
                    depths[i],
                    window_size,
                    qkv_bias,
                    rates[sum(depths[:i]) : sum(depths[: i + 1])],
                    downsample=i < num_stages - 1,
                )
            )
        for i in self.out_indices:
            self.add_module(f"norm{i}", nn.LayerNorm(embed_dims * 2**i))
        self.out_channels = [embed_dims * 2**i for i in self.out_indices]
        self.out_strides = [patch_size * 2**i for i in self.out_indices]
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.out_indices:
                outs.append(getattr(self, f"norm{i}")(x).permute(0, 3, 1, 2).contiguous())
            if stage.downsample is not None:
                x = stage.downsample(x)
        return outs
