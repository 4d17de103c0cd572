import copy
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from unikd.distill.keypoints import points_in_boxes_bev
from unikd.distill.losses import (
    AttentionTransferLoss,
    CRDLoss,
    FeatureDistillLoss,
    FitNetLoss,
    GaussianMaskedFeatureLoss,
    HeatmapKDLoss,
    LearnedMaskDistillLoss,
    MemoryQueue,
    MultiLevelInfoNCE,
    RelationDistillLoss,
    ResponseDistillLoss,
    crd_nce_loss,
    info_nce,
)
from unikd.distill.losses.infonce import pool_sparse
from unikd.models.heads import gaussian_gt_mask
from unikd.ops.bev_grid import BEVGrid
from unikd.ops.gaussian import gaussian_radius

GRID = BEVGrid(x_min=-8.0, y_min=-4.0, x_max=8.0, y_max=12.0, height=12, width=16)  # cells 1.0 x 1.333
BOXES = [
    torch.tensor(
        [[2.3, 5.1, 0.0, 4.0, 1.8, 1.5, 0.5, 0.0, 0.0], [-4.2, -1.0, 0.0, 2.0, 1.0, 1.0, -1.2, 0.0, 0.0]]
    ),
    torch.tensor([[0.7, 8.4, 0.0, 3.0, 2.2, 1.5, 2.8, 0.0, 0.0]]),
]


def box_points(box: torch.Tensor) -> list[tuple[float, float]]:
    x, y, _, length, width, _, yaw = box[:7].tolist()
    c, s = math.cos(yaw), math.sin(yaw)
    local = [(f * length / 2, lft * width / 2) for f in (-1, 0, 1) for lft in (-1, 0, 1)]
    return [(x + f * c - lft * s, y + f * s + lft * c) for f, lft in local]


def naive_bilinear(feature: torch.Tensor, x: float, y: float, grid: BEVGrid) -> torch.Tensor:
    """Bilinear read at a metric point; cell (i, j) has its centre at ((j + .5) cell_x, (i + .5) cell_y)."""
    height, width = feature.shape[1:]
    u = (x - grid.x_min) / ((grid.x_max - grid.x_min) / width) - 0.5
    v = (y - grid.y_min) / ((grid.y_max - grid.y_min) / height) - 0.5
    j0, i0 = math.floor(u), math.floor(v)
    fu, fv = u - j0, v - i0
    out = torch.zeros(feature.shape[0], dtype=feature.dtype)
    for i, j, w in (
        (i0, j0, (1 - fu) * (1 - fv)),
        (i0, j0 + 1, fu * (1 - fv)),
        (i0 + 1, j0, (1 - fu) * fv),
        (i0 + 1, j0 + 1, fu * fv),
    ):
        if 0 <= i < height and 0 <= j < width:
            out += w * feature[:, i, j]
    return out


def naive_mask(
    gt_boxes: list[torch.Tensor], height: int, width: int, min_overlap: float = 0.7, min_radius: int = 2
) -> torch.Tensor:
    cell_x, cell_y = (GRID.x_max - GRID.x_min) / width, (GRID.y_max - GRID.y_min) / height
    mask = torch.zeros(len(gt_boxes), height, width)
    for b, boxes in enumerate(gt_boxes):
        for box in boxes.tolist():
            col, row = math.floor((box[0] - GRID.x_min) / cell_x), math.floor((box[1] - GRID.y_min) / cell_y)
            radius = max(min_radius, int(gaussian_radius(box[3] / cell_x, box[4] / cell_y, min_overlap)))
            sigma = (2 * radius + 1) / 6
            for i in range(row - radius, row + radius + 1):
                for j in range(col - radius, col + radius + 1):
                    if 0 <= i < height and 0 <= j < width:
                        value = math.exp(-((i - row) ** 2 + (j - col) ** 2) / (2 * sigma**2))
                        mask[b, i, j] = max(mask[b, i, j].item(), value)
    return mask


def feature_reference(student: torch.Tensor, teacher: torch.Tensor, gt_boxes: list[torch.Tensor]) -> float:
    """The feature loss as a loop over samples, boxes and key points (naive bilinear reads)."""
    total = 0.0
    for b, boxes in enumerate(gt_boxes):
        for box in boxes:
            diffs = [
                (naive_bilinear(student[b].detach(), x, y, GRID) - naive_bilinear(teacher[b].detach(), x, y, GRID))
                .abs()
                .mean()
                for x, y in box_points(box)
            ]
            total += float(sum(diffs)) / 9
    return total / (sum(len(boxes) for boxes in gt_boxes) + 1e-4)


def test_feature_loss_matches_naive_loop():
    torch.manual_seed(0)
    student = torch.randn(2, 3, 12, 16, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(2, 3, 6, 8, dtype=torch.float64, requires_grad=True)  # coarser teacher map
    boxes = [b.double() for b in BOXES]
    loss = FeatureDistillLoss(GRID)(student, teacher, boxes)
    assert loss.item() == pytest.approx(feature_reference(student, teacher, boxes), rel=1e-9)
    loss.backward()
    assert student.grad.abs().sum() > 0 and teacher.grad is None
    assert torch.autograd.gradcheck(lambda s: FeatureDistillLoss(GRID)(s, teacher.detach(), boxes), student)


def test_feature_loss_counts_only_real_boxes():
    """A sample without boxes adds nothing (no phantom box at the origin), and padding rows are no boxes."""
    torch.manual_seed(12)
    student, teacher = torch.randn(2, 3, 12, 16, dtype=torch.float64), torch.randn(2, 3, 12, 16, dtype=torch.float64)
    boxes = [BOXES[0].double(), torch.zeros(0, 9, dtype=torch.float64)]
    loss = FeatureDistillLoss(GRID)(student, teacher, boxes).item()
    assert loss == pytest.approx(feature_reference(student, teacher, boxes), rel=1e-9)
    # By hand: the first sample's two boxes alone, over N_boxes = 2.
    alone = FeatureDistillLoss(GRID)(student[:1], teacher[:1], boxes[:1]).item()
    assert loss == pytest.approx(alone, rel=1e-9)
    nothing = [torch.zeros(0, 9), torch.zeros(0, 9)]
    assert FeatureDistillLoss(GRID)(student, teacher, nothing).item() == 0.0


def test_relation_loss_matches_naive_loop():
    torch.manual_seed(1)
    student = torch.randn(2, 3, 12, 16, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(2, 5, 12, 16, dtype=torch.float64)  # channels may differ
    boxes = [b.double() for b in BOXES]
    loss = RelationDistillLoss(GRID)(student, teacher, boxes)

    def cosines(feature: torch.Tensor, box: torch.Tensor) -> list[list[float]]:
        vectors = [naive_bilinear(feature, x, y, GRID) for x, y in box_points(box)]
        return [[float(u @ v / (u.norm() * v.norm())) for v in vectors] for u in vectors]

    total = 0.0
    for b, sample_boxes in enumerate(boxes):
        for box in sample_boxes:
            rs, rt = cosines(student[b].detach(), box), cosines(teacher[b], box)
            total += sum(abs(rs[i][j] - rt[i][j]) for i in range(9) for j in range(9)) / 81
    assert loss.item() == pytest.approx(total / 3, rel=1e-9)
    assert torch.autograd.gradcheck(lambda s: RelationDistillLoss(GRID)(s, teacher, boxes), student)
    empty = [torch.zeros(0, 9), torch.zeros(0, 9)]
    assert RelationDistillLoss(GRID)(student, teacher, empty).item() == 0.0
    # A sample without boxes leaves the loss of the other one unchanged.
    one = RelationDistillLoss(GRID)(student[:1], teacher[:1], boxes[:1]).item()
    with_empty = RelationDistillLoss(GRID)(student, teacher, [boxes[0], empty[0].double()]).item()
    assert with_empty == pytest.approx(one, rel=1e-9)


def test_gaussian_mask_lights_the_right_cell():
    mask = gaussian_gt_mask(BOXES, GRID)
    # box (2.3, 5.1): col floor(10.3) = 10, row floor(9.1 / 1.333) = 6
    assert mask[0, 6, 10] == 1.0 and mask[0, 10, 6] < 1.0
    assert torch.allclose(mask, naive_mask(BOXES, 12, 16), atol=1e-6)
    unclamped = gaussian_gt_mask(BOXES, GRID, min_radius=0)  # radius max(0, int(r)): one cell per box here
    assert torch.allclose(unclamped, naive_mask(BOXES, 12, 16, min_radius=0), atol=1e-6)
    assert unclamped.sum() == 3
    large = [torch.tensor([[1.1, 3.9, 0.0, 10.0, 6.0, 2.0, 0.3, 0.0, 0.0]])]  # 20 x 9 cells: radius 3 > min 2
    assert torch.allclose(
        gaussian_gt_mask(large, GRID.resized(24, 32)), naive_mask(large, 24, 32), atol=1e-6
    )


def head(batch: int, generator: torch.Generator) -> list[dict[str, torch.Tensor]]:
    def t(channels: int) -> torch.Tensor:
        return torch.randn(batch, channels, 12, 16, generator=generator, dtype=torch.float64)

    return [
        {"heatmap": t(n), "reg": t(2), "height": t(1), "dim": t(3), "rot": t(2), "vel": t(2)} for n in (1, 2)
    ]


def response_reference(
    student: list, teacher: list, gt_boxes: list, t_student: float, t_teacher: float, min_radius: int
) -> float:
    """The response loss as a loop over samples and cells."""
    mask = naive_mask(gt_boxes, 12, 16, min_radius=min_radius).double()
    keys = ("reg", "height", "dim", "rot", "vel")
    cls = reg = 0.0
    for b in range(len(gt_boxes)):
        for i in range(12):
            for j in range(16):
                hs = max(torch.sigmoid(task["heatmap"][b, :, i, j] / t_student).max().item() for task in student)
                ht = max(torch.sigmoid(task["heatmap"][b, :, i, j] / t_teacher).max().item() for task in teacher)
                rs = torch.cat([task[k][b, :, i, j] for task in student for k in keys])
                rt = torch.cat([task[k][b, :, i, j] for task in teacher for k in keys])
                cls += mask[b, i, j].item() * abs(hs - ht)
                reg += mask[b, i, j].item() * (rs - rt).abs().mean().item()
    return (cls + reg) / (mask.sum().item() + 1e-4)


def test_response_loss_matches_naive_loop():
    gen = torch.Generator().manual_seed(2)
    student, teacher = head(2, gen), head(2, gen)
    # Defaults: UniDistill's (student at temperature 1, teacher at 2, no minimum radius).
    loss = ResponseDistillLoss(GRID)(student, teacher, BOXES)
    assert loss.item() == pytest.approx(response_reference(student, teacher, BOXES, 1.0, 2.0, 0), rel=1e-6)
    options = {"student_temperature": 2.0, "teacher_temperature": 2.0, "min_radius": 2}
    configured = ResponseDistillLoss(GRID, **options)(student, teacher, BOXES)
    assert configured.item() == pytest.approx(response_reference(student, teacher, BOXES, 2.0, 2.0, 2), rel=1e-6)


def test_response_defaults_by_hand():
    """Hand-computed: every box here has a CornerNet radius below 1 (min_overlap 0.7), so the mask is
    one cell of weight 1 per box; the student reads sigmoid(0) = 0.5 and the teacher sigmoid(2 / 2).
    The second sample has no boxes: nothing of it enters the mask (no padding row at the ego cell)."""
    boxes = [BOXES[0], torch.zeros(0, 9)]  # box centres in cells (col 10, row 6) and (col 3, row 2)
    ones = {"reg": 2, "height": 1, "dim": 3, "rot": 2, "vel": 2}
    student = [{"heatmap": torch.zeros(2, 2, 12, 16), **{k: torch.zeros(2, c, 12, 16) for k, c in ones.items()}}]
    teacher = [{"heatmap": torch.full((2, 2, 12, 16), 2.0), **{k: torch.ones(2, c, 12, 16) for k, c in ones.items()}}]
    for task in student:  # around the ego position both agree, so a cell drawn there only adds to the mask sum
        task["heatmap"][:, :, 2:4, 7:9] = 1.0
        for key in ones:
            task[key][:, :, 2:4, 7:9] = 1.0
    loss = ResponseDistillLoss(GRID)(student, teacher, boxes)
    gap = 1 / (1 + math.exp(-1.0)) - 0.5
    assert loss.item() == pytest.approx(2 * (gap + 1.0) / (2 + 1e-4), rel=1e-6)
    mask = gaussian_gt_mask(boxes, GRID, min_radius=0)
    assert mask.sum() == 2 and mask[0, 6, 10] == 1 and mask[0, 2, 3] == 1


def test_response_gradient():
    gen = torch.Generator().manual_seed(13)
    grid = GRID.resized(6, 8)

    def small(channels: int) -> torch.Tensor:
        return torch.randn(2, channels, 6, 8, generator=gen, dtype=torch.float64)

    names = {"heatmap": 2, "reg": 2, "height": 1, "dim": 3, "rot": 2, "vel": 2}
    student = {name: small(c).requires_grad_(True) for name, c in names.items()}
    teacher = [{name: small(c) for name, c in names.items()}]
    big = [torch.tensor([[2.3, 5.1, 0.0, 16.0, 12.0, 1.5, 0.5, 0.0, 0.0]]), BOXES[1]]  # radius 1 at this size
    assert gaussian_gt_mask(big, grid, min_radius=0)[0].gt(0).sum() > 1

    def loss(*maps: torch.Tensor) -> torch.Tensor:
        return ResponseDistillLoss(grid)([dict(zip(names, maps, strict=True))], teacher, big)

    assert torch.autograd.gradcheck(loss, tuple(student.values()))


def test_gaussian_masked_feature_loss_matches_naive_loop():
    torch.manual_seed(3)
    student, teacher = torch.randn(2, 4, 6, 8), torch.randn(2, 4, 6, 8)
    loss = GaussianMaskedFeatureLoss(GRID)(student, teacher, BOXES)
    mask = naive_mask(BOXES, 6, 8)
    weighted = sum(
        mask[b, i, j] * ((student[b, :, i, j] - teacher[b, :, i, j]) ** 2).mean()
        for b in range(2)
        for i in range(6)
        for j in range(8)
    )
    assert loss.item() == pytest.approx(float(weighted / (mask.sum() + 1e-4)), rel=1e-5)


def test_attention_transfer_matches_naive_loop():
    torch.manual_seed(4)
    student, teacher = torch.randn(2, 3, 4, 5), torch.randn(2, 7, 4, 5)

    def attention(f: torch.Tensor) -> torch.Tensor:
        a = torch.tensor([[(f[:, i, j] ** 2).mean().item() for i in range(4) for j in range(5)]])[0]
        return a / math.sqrt(sum(v * v for v in a.tolist()))

    diffs = [attention(student[b]) - attention(teacher[b]) for b in range(2)]
    mse = sum(float((d**2).sum()) for d in diffs) / 40
    l2 = sum(float(d.norm()) for d in diffs) / 2
    assert AttentionTransferLoss("mse")(student, teacher).item() == pytest.approx(mse, rel=1e-5)
    assert AttentionTransferLoss("l2")(student, teacher).item() == pytest.approx(l2, rel=1e-5)


def test_fitnet_through_identity_and_resize():
    torch.manual_seed(5)
    student, teacher = torch.randn(2, 4, 6, 8), torch.randn(2, 4, 6, 8)
    assert FitNetLoss((4, 6, 8), (4, 6, 8))(student, teacher).item() == pytest.approx(
        float(((student - teacher) ** 2).mean()), rel=1e-6
    )
    small = torch.randn(2, 4, 3, 4)
    upsampled = F.interpolate(small, size=(6, 8), mode="bilinear", align_corners=False)
    assert FitNetLoss((4, 3, 4), (4, 6, 8))(small, teacher).item() == pytest.approx(
        float(((upsampled - teacher) ** 2).mean()), rel=1e-6
    )
    conv = FitNetLoss((4, 6, 8), (4, 6, 8), override="conv")
    conv(student, teacher).backward()
    assert conv.adapter[0].weight.grad.abs().sum() > 0


def test_heatmap_kd_l1_and_bce():
    student, teacher = torch.tensor([[[[2.0, -1.0]]]]), torch.tensor([[[[0.0, 3.0]]]])
    ps = [1 / (1 + math.exp(-v / 2)) for v in (2.0, -1.0)]
    pt = [1 / (1 + math.exp(-v / 2)) for v in (0.0, 3.0)]
    l1 = (abs(ps[0] - pt[0]) + abs(ps[1] - pt[1])) / 2
    bce = -sum(t * math.log(s) + (1 - t) * math.log(1 - s) for s, t in zip(ps, pt, strict=True)) / 2
    assert HeatmapKDLoss(2.0, "l1")(student, teacher).item() == pytest.approx(l1, rel=1e-6)
    assert HeatmapKDLoss(2.0, "bce")(student, teacher).item() == pytest.approx(bce, rel=1e-6)


def test_crd_nce_matches_formula():
    scores = torch.tensor([[0.5, 0.1, 0.2], [2.0, 0.3, 0.01]], dtype=torch.float64)
    noise = 2 / 10
    expected = 0.0
    for row in scores.tolist():
        expected += math.log(row[0] / (row[0] + noise + 1e-7)) + sum(
            math.log(noise / (v + noise + 1e-7)) for v in row[1:]
        )
    assert crd_nce_loss(scores, num_data=10).item() == pytest.approx(-expected / 2, rel=1e-9)


def test_crd_loss_banks_and_constants():
    torch.manual_seed(6)
    crd = CRDLoss(student_dim=6, teacher_dim=5, num_data=20, embed_dim=8, num_negatives=3)
    student, teacher = torch.randn(2, 6, 3, 3, requires_grad=True), torch.randn(2, 5, requires_grad=True)
    index, negatives = torch.tensor([4, 11]), torch.tensor([[0, 1, 2], [5, 6, 7]])
    memory_s, memory_t = crd.memory_student.clone(), crd.memory_teacher.clone()
    loss = crd(student, teacher, index, negatives)

    e_s = F.normalize(crd.embed_student(student.mean(dim=(2, 3))), dim=1)
    e_t = F.normalize(crd.embed_teacher(teacher), dim=1)
    candidates = torch.cat([index[:, None], negatives], dim=1)
    raw_s = torch.stack([torch.exp(memory_t[candidates[i]] @ e_s[i] / 0.07) for i in range(2)])
    raw_t = torch.stack([torch.exp(memory_s[candidates[i]] @ e_t[i] / 0.07) for i in range(2)])
    z_s, z_t = raw_s.mean().item() * 20, raw_t.mean().item() * 20
    expected = crd_nce_loss(raw_s / z_s, 20) + crd_nce_loss(raw_t / z_t, 20)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert crd.z_student.item() == pytest.approx(z_s, rel=1e-5)
    moved = F.normalize(0.5 * memory_s[index] + 0.5 * e_s.detach(), dim=1)
    assert torch.allclose(crd.memory_student[index], moved, atol=1e-6)
    untouched = torch.ones(20, dtype=torch.bool)
    untouched[index] = False
    assert torch.equal(crd.memory_teacher[untouched], memory_t[untouched])

    loss.backward()
    assert student.grad.abs().sum() > 0 and teacher.grad is None
    assert crd.embed_teacher.weight.grad.abs().sum() > 0
    crd(student.detach(), teacher.detach(), index)  # Z stays fixed after the first call
    assert crd.z_student.item() == pytest.approx(z_s, rel=1e-5)
    drawn = crd.sample_negatives(torch.tensor([0, 19, 7]).repeat(50))
    assert not (drawn == torch.tensor([0, 19, 7]).repeat(50)[:, None]).any() and drawn.max() < 20


def test_learned_masks_weight_the_error_and_can_freeze():
    torch.manual_seed(7)
    loss_fn = LearnedMaskDistillLoss((4, 6, 8), (4, 6, 8), num_queries=3, mask_learning_until_epoch=2)
    student, teacher = torch.randn(2, 4, 6, 8, requires_grad=True), torch.randn(2, 4, 6, 8)
    masks = torch.sigmoid(torch.einsum("qc,bchw->bqhw", loss_fn.generator.queries, teacher) / 2).detach()
    error = ((student.detach() - teacher) ** 2).mean(dim=1)
    expected = sum(masks[b, q] ** 2 * error[b] for b in range(2) for q in range(3)).sum() / masks.sum()
    loss = loss_fn(student, teacher, loss_fn.masks(teacher).detach())
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    assert student.grad.abs().sum() > 0
    assert loss_fn.generator.queries.grad is None  # distillation never moves the masks
    loss_fn.mask_learning_loss(teacher, loss_fn.masks(teacher), lambda masked: masked.pow(2).mean()).backward()
    assert loss_fn.generator.queries.grad.abs().sum() > 0
    loss_fn.set_epoch(1)
    assert loss_fn.learning_masks
    loss_fn.set_epoch(2)
    assert not loss_fn.learning_masks and loss_fn.frozen_parameters() == [loss_fn.generator.queries]
    with pytest.raises(RuntimeError, match="frozen"):
        loss_fn.mask_learning_loss(teacher, loss_fn.masks(teacher), lambda masked: masked.mean())


def test_info_nce_matches_naive_loop():
    torch.manual_seed(8)
    queries, keys = F.normalize(torch.randn(3, 4), dim=1), F.normalize(torch.randn(5, 4), dim=1)
    positives = torch.tensor([2, 0, 4])
    expected = 0.0
    for i in range(3):
        logits = [float(queries[i] @ keys[k]) / 0.07 for k in range(5)]
        expected -= logits[positives[i]] - math.log(sum(math.exp(v) for v in logits))
    assert info_nce(queries, keys, positives, 0.07).item() == pytest.approx(expected / 3, rel=1e-5)


def test_memory_queue_fills_and_wraps():
    queue = MemoryQueue(size=5, dim=1)
    queue.enqueue(torch.tensor([[1.0], [2.0], [3.0]]))
    assert queue.contents().flatten().tolist() == [1.0, 2.0, 3.0]
    queue.enqueue(torch.tensor([[4.0], [5.0], [6.0], [7.0]]))
    assert int(queue.count) == 5 and int(queue.pointer) == 2
    assert queue.contents().flatten().tolist() == [6.0, 7.0, 3.0, 4.0, 5.0]
    queue.enqueue(torch.arange(10.0, 17.0)[:, None])  # more than the queue holds: the newest 5 stay
    assert sorted(queue.contents().flatten().tolist()) == [12.0, 13.0, 14.0, 15.0, 16.0]


VOXEL_GRID = BEVGrid(-8.0, -4.0, 8.0, 12.0, height=32, width=32)  # 0.5 m voxels


def voxels(channels: int, generator: torch.Generator, count: int = 200) -> SimpleNamespace:
    coords = torch.stack(
        [
            torch.zeros(count, dtype=torch.long),
            torch.zeros(count, dtype=torch.long),
            torch.randint(0, 32, (count,), generator=generator),
            torch.randint(0, 32, (count,), generator=generator),
        ],
        dim=1,
    )
    return SimpleNamespace(features=torch.randn(count, channels, generator=generator), coords=coords)


def level_features(channels: tuple[int, int, int, int], size: int, seed: int, grad: bool) -> dict:
    gen = torch.Generator().manual_seed(seed)
    feats = {
        "voxel_encoder": voxels(channels[0], gen),
        "middle_encoder": torch.randn(1, channels[1], size, size, generator=gen),
        "backbone": [
            torch.randn(1, channels[2], size, size, generator=gen),
            torch.randn(1, channels[2], size // 2, size // 2, generator=gen),
        ],
        "neck": torch.randn(1, channels[3], size, size, generator=gen),
    }
    if grad:
        feats["voxel_encoder"].features.requires_grad_(True)
        for tensor in (feats["middle_encoder"], *feats["backbone"], feats["neck"]):
            tensor.requires_grad_(True)
    return feats


STUDENT_CHANNELS = {"voxel_encoder": 4, "middle_encoder": 6, "backbone": 2 * 5, "neck": 8}
TEACHER_CHANNELS = {"voxel_encoder": 5, "middle_encoder": 7, "backbone": 2 * 6, "neck": 9}
ONE_SAMPLE_BOXES = [
    torch.tensor(
        [[2.3, 5.1, 0.0, 4.0, 1.8, 1.5, 0.5, 0.0, 0.0], [-4.2, -1.0, 0.0, 2.0, 1.0, 1.0, -1.2, 0.0, 0.0]]
    )
]


def infonce_loss(module: MultiLevelInfoNCE, student: dict, teacher: dict) -> torch.Tensor:
    torch.manual_seed(9)  # same background cells
    return module(student, teacher, ONE_SAMPLE_BOXES)


def test_infonce_batch_one_learns_student_only():
    torch.manual_seed(10)
    module = MultiLevelInfoNCE(
        STUDENT_CHANNELS,
        TEACHER_CHANNELS,
        GRID,
        VOXEL_GRID,
        VOXEL_GRID,
        embed_dim=16,
        hidden_dim=32,
        queue_size=64,
        num_background=6,
    )
    fresh = copy.deepcopy(module)
    student, teacher = (
        level_features((4, 6, 5, 8), 8, seed=1, grad=True),
        level_features((5, 7, 6, 9), 16, seed=2, grad=True),
    )
    loss = infonce_loss(module, student, teacher)
    other = infonce_loss(fresh, level_features((4, 6, 5, 8), 8, seed=3, grad=False), teacher)
    assert torch.isfinite(loss) and loss.item() > 0 and abs(loss.item() - other.item()) > 1e-4
    loss.backward()
    for tensor in (
        student["voxel_encoder"].features,
        student["middle_encoder"],
        *student["backbone"],
        student["neck"],
    ):
        assert tensor.grad is not None and tensor.grad.abs().sum() > 0
    for tensor in (
        teacher["voxel_encoder"].features,
        teacher["middle_encoder"],
        *teacher["backbone"],
        teacher["neck"],
    ):
        assert tensor.grad is None or not tensor.grad.any()
    for projector in (module.student_projector, module.teacher_projector):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in projector.parameters())
    assert int(module.queue.count) == 2 + 6  # two objects, six background cells
    for _ in range(8):
        infonce_loss(module, student, teacher)
    assert int(module.queue.count) == 64 and int(module.queue.pointer) == (9 * 8) % 64


def test_infonce_background_cells_avoid_boxes():
    module = MultiLevelInfoNCE(STUDENT_CHANNELS, TEACHER_CHANNELS, GRID, num_background=40)
    samples = module.sample_boxes(ONE_SAMPLE_BOXES)[0]
    assert samples.shape == (42, 9) and torch.equal(samples[:2], ONE_SAMPLE_BOXES[0])
    assert not points_in_boxes_bev(samples[2:, :2], ONE_SAMPLE_BOXES[0]).any()


def test_sparse_pooling_averages_voxels_inside_each_box():
    coords = torch.tensor([[0, 0, 18, 20], [0, 0, 18, 21], [0, 0, 2, 2], [1, 0, 18, 20]])  # (b, z, y, x)
    features = torch.tensor([[1.0, 0.0], [3.0, 2.0], [100.0, 100.0], [7.0, 7.0]])
    # voxel (y 18, x 20) centre: x = -8 + 20.5 * 0.5 = 2.25, y = -4 + 18.5 * 0.5 = 5.25
    box = torch.tensor([[2.5, 5.25, 0.0, 2.0, 2.0, 1.0, 0.0, 0.0, 0.0]])
    pooled = pool_sparse(
        SimpleNamespace(features=features, coords=coords), [box, box.clone()], VOXEL_GRID, batch=2
    )
    assert torch.allclose(pooled, torch.tensor([[2.0, 1.0], [7.0, 7.0]]))


def test_plain_infonce_at_batch_one_needs_the_queue():
    torch.manual_seed(11)
    module = MultiLevelInfoNCE(
        {"neck": 8}, {"neck": 9}, embed_dim=16, hidden_dim=32, queue_size=8, mode="global"
    )
    losses = [
        module({"neck": torch.randn(1, 8, 4, 4)}, {"neck": torch.randn(1, 9, 4, 4)}).item() for _ in range(3)
    ]
    assert losses[0] == pytest.approx(0.0, abs=1e-6)  # one sample and an empty queue: no negatives
    assert losses[1] > 0 and losses[2] > 0


def _distributed_worker(rank: int, init_file: str, results: "torch.multiprocessing.Queue") -> None:
    import torch.distributed as dist

    from unikd.distill.losses.distributed import average_across_processes, gather_across_processes

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        rows = torch.full((rank + 1, 2), float(rank + 1), requires_grad=True)  # rank 0: 1 row, rank 1: 2 rows
        gathered, offset = gather_across_processes(rows)
        gathered.sum().backward()
        mean = average_across_processes(torch.tensor(float(rank + 1)))
        results.put((rank, gathered.detach().tolist(), offset, rows.grad.tolist(), mean.item()))
    finally:
        dist.destroy_process_group()


def test_gather_and_average_across_two_processes(tmp_path):
    context = torch.multiprocessing.get_context("fork")
    results = context.Queue()
    torch.multiprocessing.start_processes(
        _distributed_worker, args=(str(tmp_path / "init"), results), nprocs=2, start_method="fork"
    )
    outcome = dict((r[0], r[1:]) for r in (results.get(timeout=30) for _ in range(2)))
    expected_rows = [[1.0, 1.0], [2.0, 2.0], [2.0, 2.0]]
    assert outcome[0] == (expected_rows, 0, [[1.0, 1.0]], 1.5)
    assert outcome[1] == (expected_rows, 1, [[1.0, 1.0], [1.0, 1.0]], 1.5)
