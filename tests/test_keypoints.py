import math

import torch

from unikd.distill.keypoints import box_keypoints_bev, points_in_boxes_bev, sample_bev
from unikd.ops.bev_grid import BEVGrid

# Asymmetric region with non-square cells (0.4 m along x, 0.8 m along y): a swap of x and y,
# of rows and columns or an align_corners slip all change the sampled values.
GRID = BEVGrid(x_min=-20.0, y_min=-10.0, x_max=20.0, y_max=30.0, height=50, width=100)


def expected_keypoints(x: float, y: float, length: float, width: float, yaw: float) -> torch.Tensor:
    """The documented order, written out: 4 corners, centre, 4 edge midpoints."""
    local = [
        (length / 2, width / 2),
        (-length / 2, width / 2),
        (-length / 2, -width / 2),
        (length / 2, -width / 2),
        (0.0, 0.0),
        (length / 2, 0.0),
        (0.0, width / 2),
        (-length / 2, 0.0),
        (0.0, -width / 2),
    ]
    c, s = math.cos(yaw), math.sin(yaw)
    return torch.tensor([(x + f * c - lft * s, y + f * s + lft * c) for f, lft in local])


def coordinate_field(grid: BEVGrid) -> torch.Tensor:
    """[2, H, W]: channel 0 = x of each cell centre, channel 1 = y."""
    return grid.cell_centers().permute(2, 0, 1).contiguous()


def test_keypoints_axis_aligned_and_quarter_turn():
    box = torch.tensor([[10.0, -3.0, 0.5, 4.0, 2.0, 1.5, 0.0, 0.0, 0.0]])
    points = box_keypoints_bev(box)[0]
    assert torch.allclose(points[0], torch.tensor([12.0, -2.0]))  # front-left
    assert torch.allclose(points[2], torch.tensor([8.0, -4.0]))  # rear-right
    assert torch.allclose(points[4], torch.tensor([10.0, -3.0]))  # centre
    assert torch.allclose(points[5], torch.tensor([12.0, -3.0]))  # front midpoint
    box[0, 6] = math.pi / 2  # heading +y: front is +y, left is -x
    points = box_keypoints_bev(box)[0]
    assert torch.allclose(points[0], torch.tensor([9.0, -1.0]), atol=1e-6)
    assert torch.allclose(points[6], torch.tensor([9.0, -3.0]), atol=1e-6)


def test_keypoints_match_written_out_order():
    boxes = torch.tensor(
        [[7.3, 12.1, 0.0, 4.5, 2.0, 1.6, 0.6, 0.0, 0.0], [-5.0, 3.0, 0.0, 1.0, 0.8, 1.0, -2.4, 0.0, 0.0]]
    )
    points = box_keypoints_bev(boxes)
    assert points.shape == (2, 9, 2)
    assert torch.allclose(points[0], expected_keypoints(7.3, 12.1, 4.5, 2.0, 0.6), atol=1e-5)
    assert torch.allclose(points[1], expected_keypoints(-5.0, 3.0, 1.0, 0.8, -2.4), atol=1e-5)


def test_sample_bev_reads_true_metric_positions():
    box = torch.tensor([[[7.3, 12.1, 0.0, 4.5, 2.0, 1.6, 0.6, 0.0, 0.0]]])  # [B=1, M=1, 9]
    points = box_keypoints_bev(box)
    assert points.shape == (1, 1, 9, 2)
    sampled = sample_bev(coordinate_field(GRID)[None], points, GRID)
    assert sampled.shape == (1, 2, 1, 9)  # channels first
    assert torch.allclose(sampled[0, :, 0].t(), expected_keypoints(7.3, 12.1, 4.5, 2.0, 0.6), atol=1e-4)


def test_sample_bev_batched_uses_each_samples_map():
    field = coordinate_field(GRID)
    feature = torch.stack([field, field + 100.0])  # [2, 2, H, W]
    boxes = torch.tensor(
        [
            [[7.3, 12.1, 0.0, 4.5, 2.0, 1.6, 0.6, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]],
            [[-11.0, 20.5, 0.0, 3.0, 1.0, 1.6, 2.2, 0.0, 0.0], [4.0, -6.0, 0.0, 2.0, 1.0, 1.0, 1.0, 0.0, 0.0]],
        ]
    )  # [2, 2, 9]
    sampled = sample_bev(feature, box_keypoints_bev(boxes), GRID)
    assert sampled.shape == (2, 2, 2, 9)
    assert torch.allclose(sampled[0, :, 0].t(), expected_keypoints(7.3, 12.1, 4.5, 2.0, 0.6), atol=1e-4)
    assert torch.allclose(sampled[1, :, 0].t(), expected_keypoints(-11.0, 20.5, 3.0, 1.0, 2.2) + 100.0, atol=1e-4)
    assert torch.allclose(sampled[1, :, 1].t(), expected_keypoints(4.0, -6.0, 2.0, 1.0, 1.0) + 100.0, atol=1e-4)


def test_sample_bev_hits_the_single_hot_cell():
    feature = torch.zeros(1, 1, GRID.height, GRID.width)
    row, col = 37, 12  # y = -10 + 37.5 * 0.8 = 20.0, x = -20 + 12.5 * 0.4 = -15.0
    feature[0, 0, row, col] = 1.0
    values = sample_bev(feature, torch.tensor([[[-15.0, 20.0], [20.0, -15.0]]]), GRID)
    assert torch.allclose(values[0, 0], torch.tensor([1.0, 0.0]))


def test_points_in_rotated_box():
    box = torch.tensor([[2.0, 1.0, 0.0, 4.0, 1.0, 1.0, math.pi / 4, 0.0, 0.0]])
    along = torch.tensor([math.cos(math.pi / 4), math.sin(math.pi / 4)])
    points = torch.stack(
        [
            torch.tensor([2.0, 1.0]) + 1.9 * along,
            torch.tensor([2.0, 1.0]) + 2.1 * along,
            torch.tensor([3.0, 1.0]),
        ]
    )
    assert points_in_boxes_bev(points, box)[:, 0].tolist() == [True, False, False]


def test_sample_bev_gradient_matches_grid_sample():
    """The custom backward gives grid_sample's gradient, points near and outside the border included."""
    gen = torch.Generator().manual_seed(0)
    feature = torch.randn(2, 3, 5, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    points = torch.stack(
        [
            torch.rand(2, 11, generator=gen, dtype=torch.float64) * 46 - 23,  # x beyond [-20, 20] too
            torch.rand(2, 11, generator=gen, dtype=torch.float64) * 46 - 13,  # y beyond [-10, 30] too
        ],
        dim=-1,
    )
    assert torch.autograd.gradcheck(lambda f: sample_bev(f, points, GRID), feature)
    grad_out = torch.randn(2, 3, 11, generator=gen, dtype=torch.float64)
    (ours,) = torch.autograd.grad(sample_bev(feature, points, GRID), feature, grad_out)
    normalized = GRID.metric_to_normalized(points)[:, None]
    reference = torch.nn.functional.grid_sample(feature, normalized, align_corners=False)[:, :, 0]
    (expected,) = torch.autograd.grad(reference, feature, grad_out)
    torch.testing.assert_close(ours, expected)
