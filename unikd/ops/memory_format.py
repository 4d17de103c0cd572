"""Channels-last memory format for the 2D convolutions of a module (`--exp_options channels_last=True`)."""

from __future__ import annotations

import torch
from torch import nn


def to_channels_last(module: nn.Module) -> nn.Module:
    """Store every 4D parameter and buffer of `module` (2D convolution weights) channels-last, in place: a
    convolution whose weight is channels-last computes channels-last, which the CPU (oneDNN) and GPU tensor-core
    kernels run faster. Other tensors (sparse-convolution weights are 5D) keep their layout; values are unchanged."""
    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.dim() == 4:
            tensor.data = tensor.data.contiguous(memory_format=torch.channels_last)
    return module
