import math

import pytest
import torch

from unikd.data.classes import CLASSES, HEAD_CLASS_GROUPS
from unikd.models.heads import CenterHead, gaussian_focal_loss, gaussian_gt_mask
from unikd.models.heads.box_coder import CODE_SLICES
from unikd.ops.bev_grid import BEVGrid

# Non-square region and cells: 160 columns of 0.5 m along x, 80 rows of 0.6 m along y.
GRID = BEVGrid(x_min=-40.0, y_min=-24.0, x_max=40.0, y_max=24.0, height=80, width=160)


def make_head(grid: BEVGrid = GRID, channels: int = 8) -> CenterHead:
    return CenterHead(channels, grid=grid, shared_channels=channels, head_conv=channels)


def box(x: float, y: float, length: float = 4.0, width: float = 2.0, yaw: float = 0.3) -> list[float]:
    return [x, y, -1.2, length, width, 1.6, yaw, 1.5, -0.5]


def labels(*names: str) -> torch.Tensor:
    return torch.tensor([CLASSES.index(name) for name in names], dtype=torch.int64)


def test_heatmap_target_lights_row_from_y_and_column_from_x() -> None:
    boxes = torch.tensor([box(20.3, -9.7)])
    targets = make_head().get_targets([boxes], [labels("construction_vehicle")])
    # col = (20.3 + 40) / 0.5 = 120.6 -> 120; row = (-9.7 + 24) / 0.6 = 23.83 -> 23.
    # construction_vehicle is class 1 of task 1 (truck, construction_vehicle).
    heatmap = targets[1].heatmap
    assert heatmap.shape == (1, 2, 80, 160)
    assert heatmap[0, 1, 23, 120] == 1.0
    assert heatmap.flatten().argmax().item() == (1 * 80 + 23) * 160 + 120
    assert heatmap[0, 0].sum() == 0
    assert all(target.heatmap.sum() == 0 for task, target in enumerate(targets) if task != 1)
    assert targets[1].mask.sum() == 1 and targets[1].mask[0, 0]
    assert targets[1].indices[0, 0] == 23 * 160 + 120
    assert targets[1].classes[0, 0] == 1
    torch.testing.assert_close(targets[1].codes[0, 0, :2], torch.tensor([0.6, (14.3 / 0.6) % 1]))


def test_radius_matches_hand_computation() -> None:
    # l = 13 m, w = 2.5 m -> 26 x 4.1667 cells. With min_overlap 0.1 the smallest CornerNet case is
    # a = 0.4, b = -0.2 (26 + 4.1667) = -6.0333, c = -0.9 * 26 * 4.1667 = -97.5:
    # r = (b + sqrt(b^2 - 4ac)) / 2 = (-6.0333 + sqrt(36.401 + 156)) / 2 = 3.919 -> 3.
    # (Swapping the cell sizes, 21.67 x 5 cells, would give 4.12 -> 4.)
    boxes = torch.tensor([box(0.25, 0.3, length=13.0, width=2.5)])
    heatmap = make_head().get_targets([boxes], [labels("bus")])[2].heatmap[0, 0]
    # centre cell: col (40.25 / 0.5) = 80, row (24.3 / 0.6) = 40
    assert heatmap[40, 80] == 1
    assert torch.nonzero(heatmap[40]).flatten().tolist() == list(range(77, 84))
    assert torch.nonzero(heatmap[:, 80]).flatten().tolist() == list(range(37, 44))
    sigma = (2 * 3 + 1) / 6
    torch.testing.assert_close(heatmap[40, 81].item(), math.exp(-1 / (2 * sigma**2)))
    torch.testing.assert_close(heatmap[42, 79].item(), math.exp(-5 / (2 * sigma**2)))

    # a tiny box (1.6 x 1 cells: radius 0.54 by the same formula) takes min_radius 2: a 5-cell cross
    tiny = torch.tensor([box(0.25, 0.3, length=0.8, width=0.6)])
    heatmap = make_head().get_targets([tiny], [labels("bus")])[2].heatmap[0, 0]
    assert torch.nonzero(heatmap[40]).flatten().tolist() == list(range(78, 83))
    assert torch.nonzero(heatmap[:, 80]).flatten().tolist() == list(range(38, 43))


def test_boxes_outside_grid_and_bad_inputs() -> None:
    head = make_head()
    boxes = torch.tensor([box(40.0, 0.0), box(0.0, -24.01), box(-39.99, 23.99)])
    targets = head.get_targets([boxes], [labels("car", "car", "car")])
    assert targets[0].mask.sum() == 1
    assert targets[0].indices[0, 0] == 79 * 160 + 0
    with pytest.raises(ValueError, match="labels"):
        head.get_targets([boxes], [torch.tensor([0, 1, 10])])
    with pytest.raises(ValueError, match="positive"):
        head.get_targets([torch.tensor([box(0.0, 0.0, length=0.0)])], [labels("car")])


def perfect_predictions(head: CenterHead, targets: list) -> list[dict[str, torch.Tensor]]:
    """Head outputs that are exactly the targets: logit 20 at object centres, -20 elsewhere."""
    preds = []
    for target in targets:
        batch, num_classes, height, width = target.heatmap.shape
        pred = {"heatmap": torch.full((batch, num_classes, height, width), -20.0)}
        for name, channels in head.common_heads.items():
            pred[name] = torch.zeros(batch, channels, height, width)
        for sample, slot in torch.nonzero(target.mask).tolist():
            row, col = divmod(target.indices[sample, slot].item(), width)
            pred["heatmap"][sample, target.classes[sample, slot], row, col] = 20.0
            for name in head.common_heads:
                pred[name][sample, :, row, col] = target.codes[sample, slot, CODE_SLICES[name]]
        preds.append(pred)
    return preds


def round_trip_batch() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    boxes = [
        torch.tensor(
            [
                box(20.3, -9.7, yaw=0.3),
                box(-15.2, 10.1, length=0.7, width=0.6, yaw=-2.9),
                box(0.25, 0.3, length=12.0, width=2.9, yaw=3.1),
                box(35.1, 20.2, length=0.5, width=2.0, yaw=-1.2),
                box(45.0, 0.0),  # outside the grid: ignored
            ]
        ),
        torch.tensor(
            [
                box(-30.7, -20.3, length=7.0, width=2.5, yaw=1.7),
                box(5.05, 5.05, length=0.4, width=0.4, yaw=0.0),
            ]
        ),
    ]
    gt_labels = [labels("car", "pedestrian", "bus", "barrier", "car"), labels("truck", "traffic_cone")]
    return boxes, gt_labels


@pytest.mark.parametrize("nms", [False, True])
def test_encode_decode_recovers_boxes(nms: bool) -> None:
    head = make_head()
    gt_boxes, gt_labels = round_trip_batch()
    preds = perfect_predictions(head, head.get_targets(gt_boxes, gt_labels))
    results = head.decode(preds, nms=nms)
    assert len(results) == 2
    for result, boxes, ids in zip(results, gt_boxes, gt_labels, strict=True):
        inside = boxes[:, 0] < 40
        order = torch.argsort(result["boxes"][:, 0])
        expected_order = torch.argsort(boxes[inside, 0])
        torch.testing.assert_close(result["boxes"][order], boxes[inside][expected_order], atol=1e-4, rtol=0)
        assert result["labels"][order].tolist() == ids[inside][expected_order].tolist()
        assert (result["scores"] > 0.99).all()


def test_focal_loss_matches_naive_formula() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 2, 3, 3, generator=generator) * 3
    logits[0, 0, 0, 0], logits[0, 1, 2, 2] = 20.0, -20.0
    target = torch.rand(1, 2, 3, 3, generator=generator) * 0.9
    target[0, 0, 1, 1] = target[0, 1, 2, 2] = target[0, 0, 0, 0] = 1.0
    expected = 0.0
    for x, t in zip(logits.flatten().tolist(), target.flatten().tolist(), strict=True):
        p = min(max(1 / (1 + math.exp(-x)), 1e-4), 1 - 1e-4)
        if t == 1.0:
            expected += -math.log(p) * (1 - p) ** 2
        else:
            expected += -math.log(1 - p) * p**2 * (1 - t) ** 4
    torch.testing.assert_close(gaussian_focal_loss(logits, target).item(), expected, rtol=1e-5, atol=1e-6)


def test_loss_normalisation_and_code_weights() -> None:
    head = make_head()
    gt_boxes, gt_labels = round_trip_batch()
    preds = perfect_predictions(head, head.get_targets(gt_boxes, gt_labels))
    perfect = head.loss(preds, gt_boxes, gt_labels)
    assert set(perfect) == {f"{kind}_task{t}" for kind in ("heatmap", "bbox") for t in range(len(HEAD_CLASS_GROUPS))}
    for name, value in perfect.items():
        assert value.item() < 1e-5, name

    shifted = [{name: m + 1 if name != "heatmap" else m for name, m in pred.items()} for pred in preds]
    losses = head.loss(shifted, gt_boxes, gt_labels)
    # every object is off by 1 in each of its 10 channels: 0.25 * sum(code_weights) per object, averaged
    for task in (0, 2, 3, 5):
        torch.testing.assert_close(losses[f"bbox_task{task}"].item(), 0.25 * 8.4, rtol=1e-5, atol=1e-6)

    # heatmap loss: summed focal loss / number of centre cells (pedestrian + traffic_cone: 2)
    targets = head.get_targets(gt_boxes, gt_labels)
    logits = torch.zeros_like(preds[5]["heatmap"])
    preds[5]["heatmap"] = logits
    expected = gaussian_focal_loss(logits, targets[5].heatmap) / 2
    torch.testing.assert_close(head.loss(preds, gt_boxes, gt_labels)["heatmap_task5"], expected)


def test_loss_finite_without_boxes_and_gradients_reach_input() -> None:
    torch.manual_seed(0)
    head = make_head()
    features = torch.randn(2, 8, 80, 160, requires_grad=True)
    empty = [torch.zeros(0, 9), torch.zeros(0, 9)]
    no_labels = [torch.zeros(0, dtype=torch.int64)] * 2
    preds = head(features)
    losses = head.loss(preds, empty, no_labels)
    assert all(torch.isfinite(value) for value in losses.values())
    assert all(losses[f"bbox_task{t}"] == 0 for t in range(len(HEAD_CLASS_GROUPS)))

    gt_boxes, gt_labels = round_trip_batch()
    total = sum(head.loss(preds, gt_boxes, gt_labels).values())
    total.backward()
    assert torch.isfinite(features.grad).all() and features.grad.abs().sum() > 0


def test_forward_shapes_init_and_input_check() -> None:
    head = make_head()
    preds = head(torch.randn(2, 8, 80, 160))
    assert len(preds) == len(HEAD_CLASS_GROUPS)
    for pred, names in zip(preds, HEAD_CLASS_GROUPS, strict=True):
        assert list(pred) == ["heatmap", "reg", "height", "dim", "rot", "vel"]
        assert pred["heatmap"].shape == (2, len(names), 80, 160)
        assert pred["dim"].shape == (2, 3, 80, 160)
    assert (head.task_heads[0].heads["heatmap"][-1].bias == -2.19).all()
    with pytest.raises(ValueError, match="80, 160"):
        head(torch.randn(2, 8, 160, 80))


def test_loss_decreases_when_training() -> None:
    torch.manual_seed(0)
    grid = BEVGrid(x_min=-16.0, y_min=-10.0, x_max=16.0, y_max=10.0, height=20, width=32)
    head = CenterHead(16, grid=grid, tasks=[("car",)], shared_channels=16, head_conv=16, nms_radius=[4.0])
    features = torch.randn(1, 16, 20, 32)
    gt_boxes, gt_labels = [torch.tensor([box(3.3, -4.6)])], [labels("car")]
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    history = []
    for _ in range(30):
        losses = head.loss(head(features), gt_boxes, gt_labels)
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        history.append({name: value.item() for name, value in losses.items()} | {"total": total.item()})
    assert history[-1]["total"] < 0.1 * history[0]["total"]
    assert history[-1]["heatmap_task0"] < 0.1 * history[0]["heatmap_task0"]
    assert history[-1]["bbox_task0"] < 0.5 * history[0]["bbox_task0"]


def test_gaussian_gt_mask() -> None:
    gt_boxes, gt_labels = round_trip_batch()
    head = make_head()
    targets = head.get_targets(gt_boxes, gt_labels)
    per_task_max = torch.stack([target.heatmap.amax(dim=1) for target in targets]).amax(dim=0)
    mask = gaussian_gt_mask(gt_boxes, GRID, min_overlap=0.1)
    assert mask.shape == (2, 80, 160)
    torch.testing.assert_close(mask, per_task_max)
    assert mask[0, 23, 120] == 1  # car at (20.3, -9.7)
    tight = gaussian_gt_mask(gt_boxes, GRID, min_overlap=0.7)
    assert (tight <= mask + 1e-6).all() and tight.sum() < mask.sum()
