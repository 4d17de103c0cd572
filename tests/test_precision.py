"""Mixed precision: every loss, statistic and the voxelization compute in float32 under autocast.

Each case feeds float16 inputs under CPU float16 autocast (what `--precision 16-mixed` does on a GPU) and
compares with the float32 computation on the same (float16-rounded) values, which is what the function
must return: a 16-bit computation differs by far more than the tolerance, or overflows to inf.
"""

from __future__ import annotations

import pytest
import torch
from test_cli import LIDAR, argv

from unikd.distill.losses import (
    AttentionTransferLoss,
    CRDLoss,
    FeatureDistillLoss,
    FitNetLoss,
    GaussianMaskedFeatureLoss,
    HeatmapKDLoss,
    LearnedMaskDistillLoss,
    MultiLevelInfoNCE,
    RelationDistillLoss,
    ResponseDistillLoss,
)
from unikd.distill.losses.heatmap_kl import HeatmapKLLoss
from unikd.distill.losses.learned_mask import activate_masks, dice_diversity
from unikd.distill.losses.seg_response import SegResponseLoss
from unikd.exps.cli import run_cli
from unikd.models.bevfusion import SparseFeatures
from unikd.ops.bev_grid import BEVGrid
from unikd.ops.precision import to_float32
from unikd.ops.voxelize import voxelize

GRID = BEVGrid(x_min=-8.0, y_min=-4.0, x_max=8.0, y_max=12.0, height=12, width=16)
BOXES = [
    torch.tensor([[2.3, 5.1, 0.0, 4.0, 1.8, 1.5, 0.5, 0.0, 0.0], [-4.2, -1.0, 0.0, 2.0, 1.0, 1.0, -1.2, 0.0, 0.0]]),
    torch.tensor([[0.7, 8.4, 0.0, 3.0, 2.2, 1.5, 2.8, 0.0, 0.0]]),
]


def half(*shape: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale).half()


def heads(seed: int, scale: float = 4.0) -> list[dict[str, torch.Tensor]]:
    channels = {"reg": 2, "height": 1, "dim": 3, "rot": 2, "vel": 2}
    return [
        {"heatmap": half(2, n, 12, 16, seed=seed + n, scale=scale)}
        | {key: half(2, c, 12, 16, seed=seed + 10 * n + c, scale=scale) for key, c in channels.items()}
        for n in (1, 2)
    ]


def check_float32(function, *args, seed: int = 0) -> torch.Tensor:
    """`function(*args)` under float16 autocast on float16 inputs equals the float32 computation."""
    torch.manual_seed(seed)
    reference = function(*to_float32(args))
    torch.manual_seed(seed)
    with torch.autocast("cpu", dtype=torch.float16):
        result = function(*args)
    assert torch.isfinite(reference).all()
    assert result.dtype == torch.float32
    torch.testing.assert_close(result, reference, rtol=1e-6, atol=1e-7)
    return result


def test_dice_overlap_of_softmax_masks_does_not_overflow() -> None:
    # softmax masks scaled to mean 1 over 48 x 64 cells: a peaked mask reaches thousands, its energy passes 65504
    logits = half(1, 3, 48, 64, seed=1, scale=6.0)
    masks = activate_masks(logits.float(), "softmax").half()
    assert masks.float().pow(2).sum(dim=(2, 3)).max() > 65504  # float16 would overflow
    check_float32(dice_diversity, masks)


@pytest.mark.parametrize(
    "name",
    ["feature", "relation", "masked", "fitnet", "attention", "learned_mask", "crd", "heatmap_kd", "heatmap_kl",
     "seg_response", "response", "infonce"],
)
def test_distillation_terms_compute_in_float32(name: str) -> None:
    torch.manual_seed(0)
    student, teacher = half(2, 6, 12, 16, seed=2, scale=8.0), half(2, 6, 12, 16, seed=3, scale=8.0)
    narrow = half(2, 4, 12, 16, seed=4, scale=8.0)
    if name == "feature":
        check_float32(FeatureDistillLoss(GRID), student, teacher, BOXES)
    elif name == "relation":
        check_float32(RelationDistillLoss(GRID), student, teacher, BOXES)
    elif name == "masked":
        check_float32(GaussianMaskedFeatureLoss(GRID, torch.nn.Conv2d(4, 6, 1)), narrow, teacher, BOXES)
    elif name == "fitnet":
        check_float32(FitNetLoss((4, 12, 16), (6, 12, 16)), narrow, teacher)
    elif name == "attention":
        check_float32(AttentionTransferLoss(), narrow, teacher)
    elif name == "learned_mask":
        term = LearnedMaskDistillLoss((4, 12, 16), (6, 12, 16), num_queries=3, activation="softmax")
        check_float32(term, narrow, teacher, term.masks(teacher.float()).detach().half())
    elif name == "crd":
        term = CRDLoss(student_dim=6, teacher_dim=6, num_data=20, embed_dim=8, num_negatives=5)
        check_float32(term.eval(), student, teacher, torch.tensor([4, 11]))
    elif name == "heatmap_kd":
        check_float32(HeatmapKDLoss(mode="bce"), student, teacher)
    elif name == "heatmap_kl":
        check_float32(HeatmapKLLoss(), student, teacher)
    elif name == "seg_response":
        check_float32(SegResponseLoss(), student, teacher)
    elif name == "response":
        check_float32(ResponseDistillLoss(GRID), heads(5), heads(6), BOXES)
    else:
        channels = {"voxel_encoder": 5, "bev": 6}
        term = MultiLevelInfoNCE(channels, channels, GRID, GRID, GRID, embed_dim=8, hidden_dim=16, queue_size=8)
        coords = torch.stack([torch.tensor([0, 0, 1, 1, 0]), torch.zeros(5, dtype=torch.long),
                              torch.tensor([2, 5, 7, 1, 11]), torch.tensor([3, 9, 4, 14, 8])], dim=1)
        voxels = SparseFeatures(half(5, 5, seed=7, scale=8.0), coords)
        levels = {"voxel_encoder": voxels, "bev": student}
        check_float32(term.eval(), levels, {"voxel_encoder": voxels, "bev": teacher}, BOXES, seed=3)


def test_voxelize_computes_in_float32() -> None:
    # coordinates near 50 m: float16 steps there are 0.03 m, so 0.075 m voxel indices computed in float16 slip
    generator = torch.Generator().manual_seed(11)
    points = torch.rand(3000, 5, generator=generator) * torch.tensor([100.0, 100.0, 7.0, 1.0, 0.5])
    points[:, :3] -= torch.tensor([50.0, 50.0, 4.0])
    points = points.half()
    arguments = ((0.075, 0.075, 0.2), (-54.0, -54.0, -5.0, 54.0, 54.0, 3.0), 10, 100000)
    expected = voxelize(points.float(), *arguments)
    with torch.autocast("cpu", dtype=torch.float16):
        result = voxelize(points, *arguments)
    assert result[0].dtype == torch.float32
    for got, want in zip(result, expected, strict=True):
        assert torch.equal(got, want)


@pytest.mark.parametrize(
    ("precision", "message"),
    [
        ("bf16-true", "'bf16-true' casts the whole model and its inputs to 16 bits"),
        ("16-true", "'16-true' casts the whole model and its inputs to 16 bits"),
        ("64-true", "'64-true' is not a precision unikd trains in"),
        ("32-true", "'32-true' is not a precision unikd trains in"),
        ("bf16-mixed", "needs a GPU"),  # accepted, then refused on CPU
    ],
)
def test_precision_is_one_of_three(tmp_path, capsys: pytest.CaptureFixture, precision: str, message: str) -> None:
    with pytest.raises(SystemExit):
        run_cli(LIDAR, argv(tmp_path, tmp_path / "outputs", "--precision", precision))
    error = capsys.readouterr().err
    assert message in error and ("choose one of 32, 16-mixed, bf16-mixed" in error) == (precision != "bf16-mixed")
