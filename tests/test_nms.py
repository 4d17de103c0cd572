import math

import pytest
import torch

from unikd.ops.boxes import bev_corners
from unikd.ops.nms import circle_nms


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
