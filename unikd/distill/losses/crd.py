"""Contrastive representation distillation (CRD, Tian et al. 2020), both directions: kind "crd".

Embeddings e = normalize(W g(f)), g = global average pool for [B, C, H, W] (identity for [B, C]),
one linear head per side to 128 dims. Memory banks m_S, m_T [N_data, 128] hold one embedding per
dataset index. For sample i with dataset index y_i and K negatives n_i1..n_iK (uniform over the
other indices), scores against the other side's bank:

    h_S(i, j) = exp(e_S,i . m_T[j] / tau) / Z_S       h_T(i, j) = exp(e_T,i . m_S[j] / tau) / Z_T

tau = 0.07. Z_S and Z_T are CRD's normalisation constants: set once, at the first call, to
N_data * the mean of exp(. / tau) over that batch's scores (averaged across processes), then kept
fixed. With the noise distribution P_n = 1 / N_data, the NCE loss of one side is

    L(h) = -1/B sum_i [ log( h(i, y_i) / (h(i, y_i) + K P_n + eps) )
                        + sum_k log( K P_n / (h(i, n_ik) + K P_n + eps) ) ],   eps = 1e-7

and L_CRD = L(h_S) + L(h_T). After the loss the banks move toward the new (detached) embeddings:
m[y_i] <- normalize(momentum * m[y_i] + (1 - momentum) * e_i), momentum 0.5, with the indices and
embeddings of every process so that the banks stay identical (training mode only). The teacher is detached; its
embedding head trains through h_T.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from unikd.distill.losses.distributed import average_across_processes, gather_across_processes
from unikd.distill.losses.term import DistillTerm, TermSetup, register_term
from unikd.ops.precision import in_float32

NCE_EPS = 1e-7


def crd_nce_loss(scores: torch.Tensor, num_data: int) -> torch.Tensor:
    """CRD's NCE loss L(h) of normalised scores [B, 1 + K] (column 0 the positive)."""
    noise = (scores.shape[1] - 1) / num_data  # K * P_n
    positive = torch.log(scores[:, 0] / (scores[:, 0] + noise + NCE_EPS))
    negative = torch.log(noise / (scores[:, 1:] + noise + NCE_EPS))
    return -(positive.sum() + negative.sum()) / scores.shape[0]


@register_term("crd")
class CRDLoss(DistillTerm):
    """CRD with memory banks keyed by dataset index (formulas in the module doc), on a dense output
    (or a pooled vector); the term reads the dataset index of each sample from `batch["index"]`."""

    reads = "dense"
    needs_train_samples = True

    def __init__(
        self,
        student_dim: int,
        teacher_dim: int,
        num_data: int,
        embed_dim: int = 128,
        num_negatives: int = 4096,
        temperature: float = 0.07,
        momentum: float = 0.5,
    ) -> None:
        super().__init__()
        if num_negatives > num_data - 1:
            raise ValueError(
                f"num_negatives {num_negatives} exceeds the {num_data - 1} other dataset indices"
            )
        self.num_data = num_data
        self.num_negatives = num_negatives
        self.temperature = temperature
        self.momentum = momentum
        self.embed_student = nn.Linear(student_dim, embed_dim)
        self.embed_teacher = nn.Linear(teacher_dim, embed_dim)
        bound = 1.0 / math.sqrt(embed_dim / 3)
        self.register_buffer("memory_student", torch.rand(num_data, embed_dim) * 2 * bound - bound)
        self.register_buffer("memory_teacher", torch.rand(num_data, embed_dim) * 2 * bound - bound)
        self.register_buffer("z_student", torch.tensor(-1.0))
        self.register_buffer("z_teacher", torch.tensor(-1.0))

    @classmethod
    def build(cls, setup: TermSetup, **options: Any) -> CRDLoss:
        if setup.num_train_samples is None:
            raise ValueError(
                "a 'crd' term needs the Distiller's num_train_samples (its memory banks are per sample)"
            )
        return cls(setup.student_shape[0], setup.teacher_shape[0], setup.num_train_samples, **options)

    def distill(self, student: torch.Tensor, teacher: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        return self(student, teacher, batch["index"].to(student.device))

    def _embed(self, feature: torch.Tensor, head: nn.Linear) -> torch.Tensor:
        pooled = feature.mean(dim=(2, 3)) if feature.dim() == 4 else feature
        return F.normalize(head(pooled), dim=1)

    def sample_negatives(self, index: torch.Tensor) -> torch.Tensor:
        """[B, K] dataset indices drawn uniformly from all indices but the sample's own."""
        draws = torch.randint(0, self.num_data - 1, (index.shape[0], self.num_negatives), device=index.device)
        return draws + (draws >= index[:, None]).long()

    def _scores(
        self, embedding: torch.Tensor, memory: torch.Tensor, candidates: torch.Tensor, z: torch.Tensor
    ) -> torch.Tensor:
        """exp(e_i . memory[candidates_ij] / tau) / Z, setting Z on first use: [B, 1 + K]."""
        weights = memory[candidates].to(embedding)  # [B, 1 + K, D]
        scores = torch.exp(torch.einsum("bkd,bd->bk", weights, embedding) / self.temperature)
        if z < 0:
            z.fill_(float(average_across_processes(scores.detach().mean() * self.num_data)))
        return scores / z

    @torch.no_grad()
    def _update(self, memory: torch.Tensor, index: torch.Tensor, embedding: torch.Tensor) -> None:
        index, _ = gather_across_processes(index)
        embedding, _ = gather_across_processes(embedding.detach())
        moved = memory[index] * self.momentum + embedding.to(memory) * (1 - self.momentum)
        memory[index] = F.normalize(moved, dim=1)

    @in_float32
    def forward(
        self,
        student: torch.Tensor,
        teacher: torch.Tensor,
        index: torch.Tensor,
        negatives: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """student [B, C_S(, H, W)], teacher [B, C_T(, H, W)], index [B] dataset indices;
        negatives [B, K] dataset indices (sampled with `sample_negatives` when None)."""
        if negatives is None:
            negatives = self.sample_negatives(index)
        candidates = torch.cat([index[:, None], negatives], dim=1)
        e_student = self._embed(student, self.embed_student)
        e_teacher = self._embed(teacher.detach(), self.embed_teacher)
        loss_student = crd_nce_loss(
            self._scores(e_student, self.memory_teacher, candidates, self.z_student), self.num_data
        )
        loss_teacher = crd_nce_loss(
            self._scores(e_teacher, self.memory_student, candidates, self.z_teacher), self.num_data
        )
        if self.training:
            self._update(self.memory_student, index, e_student)
            self._update(self.memory_teacher, index, e_teacher)
        return loss_student + loss_teacher
