import math

import pytest
import torch

from unikd.ops.boxes import bev_corners
from unikd.ops.nms import circle_nms, rotated_nms
from unikd.ops.rotated_iou import paired_bev_iou, rotated_bev_iou


def naive_circle_nms(centers: torch.Tensor, scores: torch.Tensor, sq_dist_threshold: float) -> list[int]:
    points, values = centers.tolist(), scores.tolist()
    order = sorted(range(len(values)), key=lambda i: -values[i])
    suppressed = [False] * len(order)
    keep = []
    for rank, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(i)
        for j in order[rank + 1 :]:
            dx = points[i][0] - points[j][0]
            dy = points[i][1] - points[j][1]
            if dx * dx + dy * dy <= sq_dist_threshold:
                suppressed[j] = True
    return keep


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("threshold", [0.5, 4.0, 12.0])
def test_circle_nms_matches_naive_greedy(seed: int, threshold: float) -> None:
    generator = torch.Generator().manual_seed(seed)
    centers = torch.rand(300, 2, generator=generator) * 30
    scores = torch.rand(300, generator=generator)
    keep = circle_nms(centers, scores, threshold)
    assert keep.dtype == torch.int64
    assert keep.tolist() == naive_circle_nms(centers, scores, threshold)


def test_circle_nms_is_greedy_not_one_pass() -> None:
    # A suppresses B; C is within reach of B only, so greedy keeps C (one-pass "fast NMS" would not).
    centers = torch.tensor([[3.0, 0.0], [0.0, 0.0], [1.5, 0.0]])
    scores = torch.tensor([0.7, 0.9, 0.8])
    assert circle_nms(centers, scores, 4.0).tolist() == [1, 0]


def test_circle_nms_threshold_is_squared_distance_inclusive() -> None:
    centers = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    scores = torch.tensor([0.9, 0.8])
    assert circle_nms(centers, scores, 4.0).tolist() == [0]
    assert circle_nms(centers, scores, 3.9).tolist() == [0, 1]


def test_circle_nms_empty() -> None:
    assert circle_nms(torch.zeros(0, 2), torch.zeros(0), 1.0).tolist() == []


def test_bev_corners_order_and_rotation() -> None:
    # l = 4 along the heading (+y at yaw = 90 deg), w = 2.
    box = torch.tensor([[10.0, -5.0, 0.0, 4.0, 2.0, 1.5, math.pi / 2, 0.0, 0.0]])
    expected = torch.tensor([[[9.0, -3.0], [9.0, -7.0], [11.0, -7.0], [11.0, -3.0]]])
    torch.testing.assert_close(bev_corners(box), expected, atol=1e-5, rtol=0)


def raster_iou(a: list[float], b: list[float], cells: int = 1200) -> float:
    """BEV IoU of two boxes by counting the centres of a fine grid over both that fall in each box (an
    independent reference: no polygon clipping)."""
    corners = bev_corners(torch.tensor([a, b], dtype=torch.float64))
    low, high = corners.flatten(0, 1).min(0).values, corners.flatten(0, 1).max(0).values
    steps = [low[i] + (torch.arange(cells, dtype=torch.float64) + 0.5) * (high[i] - low[i]) / cells for i in range(2)]
    xs, ys = torch.meshgrid(*steps, indexing="ij")
    inside = []
    for box in (a, b):
        dx, dy = xs - box[0], ys - box[1]
        cos, sin = math.cos(box[6]), math.sin(box[6])
        along, across = cos * dx + sin * dy, -sin * dx + cos * dy
        inside.append((along.abs() <= box[3] / 2) & (across.abs() <= box[4] / 2))
    return ((inside[0] & inside[1]).sum() / (inside[0] | inside[1]).sum()).item()


def rbox(x: float, y: float, length: float, width: float, yaw: float) -> list[float]:
    return [x, y, 0.3, length, width, 1.5, yaw]


def test_rotated_iou_hand_computed_cases() -> None:
    boxes = torch.tensor([
        rbox(0.0, 0.0, 1.0, 1.0, 0.0),
        rbox(0.0, 0.0, 1.0, 1.0, math.pi / 4),  # centred 45-degree copy: regular octagon, IoU 1 / sqrt(2)
        rbox(0.5, 0.25, 1.0, 1.0, 0.0),  # shifted: overlap 0.5 x 0.75
        rbox(0.0, 0.0, 2.0, 0.5, math.pi / 2),  # a 2 x 0.5 bar along y: overlap 0.5 x 1 (heading matters)
        rbox(3.0, 0.0, 1.0, 1.0, 0.3),  # apart
    ])
    iou = rotated_bev_iou(boxes[:1], boxes)[0]
    expected = [1.0, 1 / math.sqrt(2), 0.375 / (2 - 0.375), 0.5 / (1 + 1 - 0.5), 0.0]
    torch.testing.assert_close(iou, torch.tensor(expected), atol=1e-5, rtol=0)
    # the bar along x instead (yaw 0): overlap 1 x 0.5 as well, but at yaw 0.3 it differs from yaw -0.3
    # only by mirror symmetry: same IoU with the unit square, different IoU with an asymmetric partner
    partner = torch.tensor([rbox(0.4, 0.2, 1.5, 0.7, 0.0)])
    tilted = torch.tensor([rbox(0.0, 0.0, 2.0, 0.5, 0.3), rbox(0.0, 0.0, 2.0, 0.5, -0.3)])
    values = rotated_bev_iou(tilted, partner)[:, 0]
    assert abs(values[0] - values[1]) > 0.01
    for box, value in zip(tilted.tolist(), values.tolist(), strict=True):
        assert value == pytest.approx(raster_iou(box, partner[0].tolist()), abs=2e-3)


@pytest.mark.parametrize("seed", [0, 1])
def test_rotated_iou_matches_rasterisation_at_asymmetric_places(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    boxes = torch.zeros(24, 7)
    boxes[:, 0] = 10.0 + torch.rand(24, generator=generator) * 3
    boxes[:, 1] = -7.0 + torch.rand(24, generator=generator) * 2
    boxes[:, 3:5] = 0.5 + torch.rand(24, 2, generator=generator) * 2.5
    boxes[:, 6] = (torch.rand(24, generator=generator) * 2 - 1) * math.pi
    iou = rotated_bev_iou(boxes[:6], boxes)
    overlapping = 0
    for i in range(6):
        for j in range(24):
            reference = raster_iou(boxes[i].tolist(), boxes[j].tolist(), cells=600)
            assert iou[i, j].item() == pytest.approx(reference, abs=4e-3), (i, j)
            overlapping += 0.05 < reference < 0.95
    assert overlapping > 20  # partial overlaps, not only 0 and 1
    torch.testing.assert_close(paired_bev_iou(boxes[:6], boxes[6:12]), iou[range(6), range(6, 12)])
    torch.testing.assert_close(iou, rotated_bev_iou(boxes, boxes[:6]).T)


def naive_rotated_nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> list[int]:
    order = sorted(range(len(scores)), key=lambda i: -scores[i].item())
    keep: list[int] = []
    for i in order:
        if all(rotated_bev_iou(boxes[i : i + 1], boxes[k : k + 1]).item() <= threshold for k in keep):
            keep.append(i)
    return keep


@pytest.mark.parametrize("threshold", [0.1, 0.5])
def test_rotated_nms_matches_naive_greedy(threshold: float) -> None:
    generator = torch.Generator().manual_seed(3)
    boxes = torch.zeros(80, 9)
    boxes[:, :2] = torch.rand(80, 2, generator=generator) * torch.tensor([12.0, 5.0]) + torch.tensor([20.0, -30.0])
    boxes[:, 3:5] = 0.5 + torch.rand(80, 2, generator=generator) * 3
    boxes[:, 6] = torch.rand(80, generator=generator) * 6
    scores = torch.rand(80, generator=generator)
    keep = rotated_nms(boxes, scores, threshold)
    assert keep.dtype == torch.int64
    assert keep.tolist() == naive_rotated_nms(boxes, scores, threshold)
    assert 1 < len(keep) < 80


def test_rotated_nms_suppresses_strictly_above_the_threshold_and_by_heading() -> None:
    # two 2 x 1 boxes, the second shifted by 1.0 along x: overlap 1 x 1, IoU 1 / 3
    boxes = torch.tensor([rbox(0.0, 0.0, 2.0, 1.0, 0.0), rbox(1.0, 0.0, 2.0, 1.0, 0.0)])
    scores = torch.tensor([0.6, 0.9])
    assert rotated_nms(boxes, scores, 1 / 3 - 1e-4).tolist() == [1]
    assert rotated_nms(boxes, scores, 1 / 3 + 1e-4).tolist() == [1, 0]
    # turned by 90 degrees, the second box is a 1 x 2 bar: overlap 0.5 x 1 -> IoU 0.5 / 3.5
    turned = boxes.clone()
    turned[1, 6] = math.pi / 2
    assert rotated_iou_value(turned) == pytest.approx(0.5 / 3.5, abs=1e-5)
    assert rotated_nms(turned, scores, 0.2).tolist() == [1, 0]
    assert rotated_nms(torch.zeros(0, 7), torch.zeros(0), 0.1).tolist() == []


def rotated_iou_value(boxes: torch.Tensor) -> float:
    return rotated_bev_iou(boxes[:1], boxes[1:]).item()
