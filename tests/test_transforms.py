"""BEV augmentation: points and boxes move together; the bda matrix says how."""

import numpy as np
import pytest

from unikd.data.transforms import apply_bda_to_boxes, apply_bda_to_points, bda_matrix


def points_in_boxes_naive(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """[N, M] membership by moving each point into each box's frame (independent of the bda code)."""
    inside = np.zeros((len(points), len(boxes)), dtype=bool)
    for m, (x, y, z, length, width, height, yaw, *_rest) in enumerate(boxes):
        for n, (px, py, pz) in enumerate(points[:, :3]):
            dx, dy = px - x, py - y
            local_x = np.cos(yaw) * dx + np.sin(yaw) * dy
            local_y = -np.sin(yaw) * dx + np.cos(yaw) * dy
            inside[n, m] = abs(local_x) <= length / 2 and abs(local_y) <= width / 2 and abs(pz - z) <= height / 2
    return inside


@pytest.mark.parametrize("flip_x,flip_y", [(False, False), (True, False), (False, True), (True, True)])
def test_points_stay_in_their_boxes(flip_x: bool, flip_y: bool) -> None:
    rng = np.random.default_rng(0)
    boxes = np.array(
        [[12.0, -5.0, 0.5, 4.6, 1.9, 1.6, 0.4, 3.0, -1.0], [-20.0, 8.0, 1.0, 10.0, 2.5, 3.2, -2.2, 0.0, 5.0]]
    )
    points = np.concatenate(
        [rng.uniform(-25, 25, size=(400, 3)), rng.uniform(0, 1, size=(400, 2))], axis=1
    )
    points[:, 2] = rng.uniform(-1, 3, size=400)
    bda = bda_matrix(rotation=0.7, scale=1.07, translation=np.array([0.3, -0.2, 0.1]), flip_x=flip_x, flip_y=flip_y)
    before = points_in_boxes_naive(points, boxes)
    after = points_in_boxes_naive(apply_bda_to_points(points, bda), apply_bda_to_boxes(boxes, bda))
    assert before.sum() > 5
    np.testing.assert_array_equal(before, after)


def test_heading_and_velocity_follow_the_matrix() -> None:
    box = np.array([[5.0, 2.0, 0.0, 4.0, 2.0, 1.5, 0.3, 2.0, 1.0]])
    bda = bda_matrix(rotation=0.5, scale=1.0, translation=np.zeros(3), flip_x=False, flip_y=True)
    out = apply_bda_to_boxes(box, bda)
    # rotate by 0.5 then mirror y: heading 0.3 -> 0.8 -> -0.8; velocity rotated then mirrored
    assert out[0, 6] == pytest.approx(-0.8)
    cos, sin = np.cos(0.5), np.sin(0.5)
    vx, vy = cos * 2.0 - sin * 1.0, sin * 2.0 + cos * 1.0
    np.testing.assert_allclose(out[0, 7:9], [vx, -vy], atol=1e-12)
    np.testing.assert_allclose(out[0, :2], [cos * 5 - sin * 2, -(sin * 5 + cos * 2)], atol=1e-12)


def test_scale_scales_sizes_and_velocity() -> None:
    box = np.array([[1.0, 1.0, 1.0, 4.0, 2.0, 1.5, 0.0, 2.0, 0.0]])
    out = apply_bda_to_boxes(box, bda_matrix(0.0, 1.1, np.zeros(3), False, False))
    np.testing.assert_allclose(out[0, :6], [1.1, 1.1, 1.1, 4.4, 2.2, 1.65])
    np.testing.assert_allclose(out[0, 7:9], [2.2, 0.0])
