import math

import pytest
import torch

from unikd.distill.distiller import Distiller
from unikd.distill.losses import TERM_KINDS
from unikd.distill.losses.heatmap_kl import HeatmapKLLoss
from unikd.models.bevfusion import BEVFusion
from unikd.models.configs import model_config


def test_heatmap_kl_by_hand():
    # One class over two cells: the student spreads its mass evenly, the teacher 3 : 1 at T = 4.
    student = torch.zeros(1, 1, 1, 2)
    teacher = torch.tensor([[[[4 * math.log(3.0), 0.0]]]])
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert HeatmapKLLoss()(student, teacher).item() == pytest.approx(16 * kl, rel=1e-6)
    assert HeatmapKLLoss()(teacher, teacher).item() == pytest.approx(0.0, abs=1e-7)
    assert HeatmapKLLoss()(teacher + 5.0, teacher).item() == pytest.approx(0.0, abs=1e-6)  # offset-free


def test_heatmap_kl_matches_naive_loop_and_gradient():
    gen = torch.Generator().manual_seed(0)
    student = torch.randn(2, 3, 4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(2, 3, 4, 5, generator=gen, dtype=torch.float64)
    total = 0.0
    for b in range(2):
        for k in range(3):
            qs = torch.softmax(student[b, k].flatten().detach() / 2, 0).tolist()
            qt = torch.softmax(teacher[b, k].flatten() / 2, 0).tolist()
            total += sum(t * math.log(t / s) for s, t in zip(qs, qt, strict=True))
    loss = HeatmapKLLoss(temperature=2.0)
    assert loss(student, teacher).item() == pytest.approx(4 * total / 6, rel=1e-9)
    assert torch.autograd.gradcheck(lambda s: loss(s, teacher), student)


def test_heatmap_kl_is_a_term_kind():
    assert TERM_KINDS["heatmap_kl"] is HeatmapKLLoss
    torch.manual_seed(0)
    student = BEVFusion(model_config("student", ("lidar",)))  # 135 x 135 head onto the teacher's 180 x 180
    teacher = BEVFusion(model_config("nuscenes", ("lidar",))).requires_grad_(False)
    distiller = Distiller({"kl": {"kind": "heatmap_kl", "source": "head", "temperature": 2.0}}, {"kl": 3.0}, student, teacher)
    assert distiller.terms["kl"].resize.size == (180, 180) and distiller.terms["kl"].temperature == 2.0

    def heads(model: BEVFusion, grad: bool) -> list[dict[str, torch.Tensor]]:
        size = model.output_shapes()["head"]
        return [{"heatmap": torch.randn(1, len(task), *size, requires_grad=grad)} for task in model.head.tasks]

    student_head, teacher_head = heads(student, True), heads(teacher, False)
    loss = distiller({"head": student_head}, {"head": teacher_head}, {})["distill/kl"]
    logits = torch.cat([task["heatmap"] for task in student_head], dim=1)
    resized = torch.nn.functional.interpolate(logits, size=(180, 180), mode="bilinear", align_corners=False)
    expected = 3.0 * HeatmapKLLoss(2.0)(resized, torch.cat([task["heatmap"] for task in teacher_head], dim=1))
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert all(task["heatmap"].grad.abs().sum() > 0 for task in student_head)
