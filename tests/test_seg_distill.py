"""Distillation of map segmentation: the seg_response term by hand, the segmentation pairings' terms, and the
error of terms that read a detection head the model does not have."""

import math
from pathlib import Path

import pytest
import torch

from unikd.distill.distiller import SEGMENTATION_TERMS, UNIDISTILL_TERMS, Distiller
from unikd.distill.losses import TERM_KINDS
from unikd.distill.losses.seg_response import SegResponseLoss
from unikd.exps.exp_files import load_exp_class
from unikd.models.bevfusion import BEVFusion
from unikd.models.configs import model_config

EXP_DIR = Path(__file__).resolve().parents[1] / "exps" / "nuscenes" / "BEVFusion"
SMALL = {"model_size": "small", "teacher_model_size": "small", "num_workers": 0, "allow_random_teacher": True}
STUDENT = torch.tensor([0.0, 1.0, -3.0])
TEACHER = torch.tensor([2.0, -1.0, -3.0])


def sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z))


def test_binary_kl_by_hand_and_its_gradient() -> None:
    temperature = 2.0
    expected, gradient = 0.0, []
    for s, t in zip(STUDENT.tolist(), TEACHER.tolist(), strict=True):
        p_s, p_t = sigmoid(s / temperature), sigmoid(t / temperature)
        expected += p_t * math.log(p_t / p_s) + (1 - p_t) * math.log((1 - p_t) / (1 - p_s))
        gradient.append(temperature * (p_s - p_t) / 3)
    student = STUDENT.clone().requires_grad_(True)
    teacher = TEACHER.clone().requires_grad_(True)
    loss = SegResponseLoss(temperature=temperature)(student, teacher)
    assert loss.item() == pytest.approx(temperature**2 * expected / 3, rel=1e-6)
    loss.backward()
    assert student.grad.tolist() == pytest.approx(gradient, rel=1e-5, abs=1e-7)
    assert teacher.grad is None  # the teacher is detached
    same = SegResponseLoss()(STUDENT, STUDENT)
    assert same.item() == pytest.approx(0.0, abs=1e-7)
    extreme = SegResponseLoss()(torch.tensor([-100.0, 100.0]), torch.tensor([100.0, -100.0]))
    assert torch.isfinite(extreme) and extreme.item() == pytest.approx(
        100.0, rel=1e-4
    )  # -log sigmoid(-100) each


def test_probability_mse_by_hand() -> None:
    expected = (
        sum((sigmoid(s) - sigmoid(t)) ** 2 for s, t in zip(STUDENT.tolist(), TEACHER.tolist(), strict=True))
        / 3
    )
    assert SegResponseLoss("mse")(STUDENT, TEACHER).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="loss must be one of"):
        SegResponseLoss("l1")
    with pytest.raises(ValueError, match="temperature must be positive"):
        SegResponseLoss(temperature=0.0)


def seg_model(modalities: tuple[str, ...]) -> BEVFusion:
    return BEVFusion(model_config("small", modalities, "segmentation"))


def fake_outputs(model: BEVFusion) -> dict:
    """Random dense outputs with `model`'s shapes (batch size 1), the student's requiring gradients."""
    return {
        name: torch.randn(1, *shape, requires_grad=True)
        for name, shape in model.output_shapes().items()
        if name in ("bev", "neck", "seg")
    }


def test_segmentation_terms_camera_from_fusion() -> None:
    assert TERM_KINDS["seg_response"] is SegResponseLoss
    torch.manual_seed(0)
    student, teacher = seg_model(("camera",)), seg_model(("lidar", "camera")).requires_grad_(False)
    weights = {"fitnet": 1.0, "masked": 2.0, "seg_response": 10.0}
    distiller = Distiller(SEGMENTATION_TERMS, weights, student, teacher)
    student_outputs, teacher_outputs = fake_outputs(student), fake_outputs(teacher)
    batch = {"gt_boxes": [torch.tensor([[5.0, -10.0, 0.0, 4.0, 2.0, 1.5, 0.3, 0.0, 0.0]])]}
    losses = distiller(student_outputs, teacher_outputs, batch)
    assert set(losses) == {"distill/fitnet", "distill/masked", "distill/seg_response"}
    assert all(torch.isfinite(value) and value > 0 for value in losses.values())
    expected = 10.0 * SegResponseLoss()(student_outputs["seg"], teacher_outputs["seg"])
    torch.testing.assert_close(losses["distill/seg_response"], expected)
    sum(losses.values()).backward()
    assert student_outputs["seg"].grad.abs().sum() > 0 and student_outputs["bev"].grad.abs().sum() > 0
    assert distiller.terms["fitnet"].adapter[0].weight.grad.abs().sum() > 0  # camera 32 -> fused 64 channels


def test_terms_of_the_detection_head_need_one() -> None:
    segmentation, detection = seg_model(("lidar",)), BEVFusion(model_config("small", ("lidar",)))
    for kind in ("response", "heatmap_kd", "heatmap_kl"):
        spec = {"response": {"kind": kind, "source": "head"}}
        with pytest.raises(ValueError, match="the student has no detection head"):
            Distiller(spec, {"response": 1.0}, segmentation, detection)
        with pytest.raises(ValueError, match="the teacher has no detection head"):
            Distiller(spec, {"response": 1.0}, detection, segmentation)
    with pytest.raises(ValueError, match="teacher's detection head, and the teacher has none"):
        Distiller(
            {"mask": {"kind": "learned_mask", "source": "neck"}}, {"mask": 1.0}, detection, segmentation
        )
    with pytest.raises(KeyError, match="reads 'seg', which the teacher does not output"):
        Distiller(SEGMENTATION_TERMS, {"seg_response": 1.0}, segmentation, detection)
    with pytest.raises(ValueError, match="reads the segmentation logits"):
        Distiller({"r": {"kind": "seg_response", "source": "neck"}}, {"r": 1.0}, segmentation, segmentation)
    assert Distiller(UNIDISTILL_TERMS, {"feature": 1.0, "relation": 1.0}, segmentation, segmentation).terms


@pytest.mark.parametrize("student", ["camera", "lidar"])
def test_segmentation_pairing_files(student: str) -> None:
    stem = f"BEVFusion_nuscenes_seg_{student}_exp_distill_fusion"
    exp = load_exp_class(EXP_DIR / f"{stem}.py")(exp_options=SMALL)
    plain = load_exp_class(EXP_DIR / f"BEVFusion_nuscenes_seg_{student}_exp.py")
    assert isinstance(exp, plain) and exp.task == "segmentation" and exp.evaluation.reads_map_masks
    assert exp.model.head is None and exp.objective.teacher.head is None and exp.objective.teacher.fuser is not None
    assert set(exp.objective.distiller.terms) == {"fitnet", "seg_response"}  # masked is off (weight 0) until asked for
    assert set(exp.state_dict()) == set(plain(exp_options={"model_size": "small"}).state_dict())
    with pytest.raises(ValueError, match="segmentation uses 'metric'"):
        plain(exp_options={"model_size": "small", "eval_backend": "devkit"})
