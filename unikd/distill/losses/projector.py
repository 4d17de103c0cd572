"""Projection head for contrastive losses: Linear-BN-ReLU-Linear, then L2 normalisation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Projector(nn.Module):
    """z = normalize(W2 relu(BN(W1 x))), [N, in_dim] -> [N, out_dim] unit vectors.

    BatchNorm cannot estimate a variance from one row: a training batch of a single row is
    normalised with the running statistics instead (as in evaluation).
    """

    def __init__(self, in_dim: int, out_dim: int = 128, hidden_dim: int = 512) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.bn = nn.BatchNorm1d(hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"expected [N, {self.in_dim}], got {tuple(x.shape)}")
        hidden = self.fc1(x)
        if self.training and x.shape[0] == 1:
            bn = self.bn
            hidden = F.batch_norm(
                hidden, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps
            )
        else:
            hidden = self.bn(hidden)
        return F.normalize(self.fc2(hidden.relu()), dim=-1)
