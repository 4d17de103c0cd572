"""Learned masks guided by the teacher's MGFM queries (VeXKD): where the masks come from, when they
learn, and the masked loss on a hand-computed case."""

from __future__ import annotations

import pytest
import torch

from unikd.distill.distiller import Distiller
from unikd.distill.losses.learned_mask import LearnedMaskDistillLoss, MaskGenerator, QueryGuidedMaskGenerator
from unikd.models.bevfusion import BEVFusion
from unikd.models.configs import model_config

BOXES = [
    torch.tensor(
        [[5.0, -10.0, 0.0, 4.0, 2.0, 1.5, 0.3, 0.0, 0.0], [-20.0, 7.0, 0.0, 0.8, 0.7, 1.7, 1.3, 0.0, 0.0]]
    )
]
BATCH = {"gt_boxes": BOXES, "gt_labels": [torch.tensor([0, 8])]}


def mgfm_teacher() -> BEVFusion:
    config = model_config("small_mgfm", ("lidar", "camera"))
    config["fuser"].update(embed_dims=16, num_heads=2, num_blocks=1, ffn_channels=16)
    return BEVFusion(config).requires_grad_(False).eval()


def dense_outputs(model: BEVFusion, names: tuple[str, ...], grad: bool) -> dict[str, torch.Tensor]:
    """Random outputs (batch 1) with the model's shapes for the named dense outputs."""
    shapes = model.output_shapes()
    return {name: torch.randn(1, *shapes[name], requires_grad=grad) for name in names if name in shapes}


def test_masked_loss_applies_the_masks_to_both_features_hand_computed() -> None:
    term = LearnedMaskDistillLoss((2, 1, 2), (2, 1, 2), num_queries=2)  # equal shapes: identity adapter
    student = torch.tensor([[[[1.0, 2.0]], [[3.0, 0.0]]]])  # [B=1, C=2, H=1, W=2]
    teacher = torch.tensor([[[[0.0, 0.0]], [[1.0, 2.0]]]])
    masks = torch.tensor([[[[0.5, 1.0]], [[0.0, 0.25]]]])  # [B=1, Q=2, H=1, W=2]
    # mask 0: cell 0 (0.5*1 - 0, 0.5*3 - 0.5*1) -> (0.25 + 1) / 2; cell 1 (2 - 0, 0 - 2) -> (4 + 4) / 2
    # mask 1: cell 0 zero; cell 1 (0.5 - 0, 0 - 0.5) -> (0.25 + 0.25) / 2; over sum M = 1.75
    expected = (0.625 + 4.0 + 0.0 + 0.25) / 1.75
    assert term(student, teacher, masks).item() == pytest.approx(expected, rel=1e-6)


def test_masks_come_from_the_teacher_mgfm_queries_when_it_has_them() -> None:
    torch.manual_seed(0)
    teacher, student = mgfm_teacher(), BEVFusion(model_config("small", ("lidar",)))
    spec = {"mask": {"kind": "learned_mask", "source": "neck", "num_queries": 2, "num_heads": 2}}
    term = Distiller(spec, {"mask": 1.0}, student, teacher).terms["mask"]
    assert isinstance(term.generator, QueryGuidedMaskGenerator) and term.teacher_context == (
        "fusion_queries",
    )
    assert len(term.generator.blocks) == 3  # VeXKD's choice by default
    student_out = dense_outputs(student, ("neck",), grad=True)
    teacher_out = dense_outputs(teacher, ("neck", "fusion_queries"), grad=False)
    loss = term.distill(
        student_out["neck"], teacher_out["neck"], BATCH, {"fusion_queries": teacher_out["fusion_queries"]}
    )
    masks = term.generator(teacher_out["neck"], teacher_out["fusion_queries"])
    torch.testing.assert_close(loss[""], term(student_out["neck"], teacher_out["neck"], masks.detach()))
    other = term.distill(
        student_out["neck"], teacher_out["neck"], BATCH, {"fusion_queries": torch.randn(1, 16, 64, 64)}
    )
    assert not torch.allclose(other[""], loss[""])  # other queries, other masks
    with pytest.raises(ValueError, match="fusion_queries"):
        term.distill(student_out["neck"], teacher_out["neck"], BATCH)

    conv_teacher = BEVFusion(model_config("small", ("lidar", "camera")))
    own = {"kind": "learned_mask", "source": "neck", "num_queries": 2, "queries": "own"}
    for spec_, teacher_ in ((own, teacher), ({"kind": "learned_mask", "source": "neck"}, conv_teacher)):
        term = Distiller({"mask": spec_}, {"mask": 1.0}, student, teacher_).terms["mask"]
        assert isinstance(term.generator, MaskGenerator) and term.teacher_context == ()
    fusion = {"kind": "learned_mask", "source": "neck", "queries": "fusion"}
    with pytest.raises(ValueError, match="no MGFM fuser"):
        Distiller({"mask": fusion}, {"mask": 1.0}, student, conv_teacher)
    with pytest.raises(ValueError, match="own queries"):
        Distiller({"mask": dict(own, num_blocks=2)}, {"mask": 1.0}, student, teacher)


def test_query_guided_masks_learn_until_the_stop_epoch_at_both_levels() -> None:
    torch.manual_seed(1)
    teacher, student = mgfm_teacher(), BEVFusion(model_config("small", ("lidar",)))
    options = {
        "kind": "learned_mask",
        "num_queries": 2,
        "num_heads": 2,
        "num_blocks": 2,
        "mask_learning_until_epoch": 1,
    }
    spec = {"low": dict(options, source="bev"), "high": dict(options, source="neck")}
    distiller = Distiller(spec, {"low": 1.0, "high": 2.0}, student, teacher).train()
    student_out = dense_outputs(student, ("bev", "neck"), grad=True)
    teacher_out = dense_outputs(teacher, ("bev", "neck", "fusion_queries"), grad=False)
    generators = {name: distiller.terms[name].generator for name in spec}

    losses = distiller(student_out, teacher_out, BATCH)
    assert set(losses) == {
        "distill/low",
        "distill/high",
        "distill/low/mask_learning",
        "distill/high/mask_learning",
    }
    assert all(torch.isfinite(value) for value in losses.values())
    (losses["distill/low"] + losses["distill/high"]).backward(retain_graph=True)
    assert student_out["bev"].grad.abs().sum() > 0 and student_out["neck"].grad.abs().sum() > 0
    assert all(
        p.grad is None for g in generators.values() for p in g.parameters()
    )  # distillation never moves them
    (losses["distill/low/mask_learning"] + losses["distill/high/mask_learning"]).backward()
    for name, generator in generators.items():  # through the frozen teacher's decoder (bev) or head (neck)
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in generator.parameters()), name
    assert all(p.grad is None for p in teacher.parameters())

    distiller.zero_grad(set_to_none=True)
    distiller.set_epoch(1)
    losses = distiller(student_out, teacher_out, BATCH)
    assert set(losses) == {"distill/low", "distill/high"}
    sum(losses.values()).backward()
    # frozen: zero gradients (the parameters stay in DDP's reduction), and the optimizer is told to skip them
    assert all(not p.grad.any() for g in generators.values() for p in g.parameters())
    assert all(distiller.terms[name].frozen_parameters() == list(generators[name].parameters()) for name in spec)
    assert all(bool(distiller.terms[name].masks_frozen) for name in spec)  # saved with the distiller's state
