"""Camera images of the synthetic world through the rig's pinhole models.

The ground (lanes, markings, paving, grass; fading into haze with distance) is found per pixel by
intersecting the pixel's ray with the ground plane, at half resolution (then upsampled). Boxes are
drawn on top as shaded faces (back faces culled, clipped at a near plane behind the camera) in a
painter's order: far to near, refined by separating lines between box footprints so that a near
box is always painted after a box it hides.
"""

from __future__ import annotations

import heapq

import cv2
import numpy as np

from unikd.data.synthetic.appearance import SKY_HORIZON, SKY_TOP, SUN, fog_keep
from unikd.data.synthetic.calibration import IMAGE_HEIGHT, IMAGE_WIDTH, CameraSpec
from unikd.data.synthetic.scene import Road

NEAR = 0.2  # metres: faces are clipped at this depth in front of the camera
MAX_BOX_DISTANCE = 250.0

# Corner k of a box has signs (x, y, z) from its bits: k = 4 * (x > 0) + 2 * (y > 0) + (z > 0).
CORNER_SIGNS = np.array(
    [[2 * (k >> 2) - 1, 2 * ((k >> 1) & 1) - 1, 2 * (k & 1) - 1] for k in range(8)], dtype=np.float64
)
# Faces as corner loops, and their outward normals in the box frame.
FACE_LOOPS = np.array([[4, 5, 7, 6], [0, 1, 3, 2], [2, 3, 7, 6], [0, 1, 5, 4], [1, 3, 7, 5], [0, 2, 6, 4]])
FACE_NORMALS = np.array(
    [[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=np.float64
)
FOOTPRINT = (0, 2, 6, 4)


def box_corners(centres: np.ndarray, sizes: np.ndarray, yaws: np.ndarray) -> np.ndarray:
    """Corners [N, 8, 3] of boxes (centre, l w h, yaw about z) in their frame of reference."""
    local = CORNER_SIGNS[None] * sizes[:, None, :] / 2
    cos, sin = np.cos(yaws)[:, None], np.sin(yaws)[:, None]
    x = cos * local[..., 0] - sin * local[..., 1]
    y = sin * local[..., 0] + cos * local[..., 1]
    return centres[:, None, :] + np.stack([x, y, local[..., 2]], axis=-1)


class CameraRenderer:
    """Renders one camera; the per-pixel ground rays are computed once, in the ego frame."""

    def __init__(self, spec: CameraSpec) -> None:
        self.spec = spec
        self.translation = np.array(spec.translation)
        self.rotation = spec.rotation_matrix  # camera -> ego
        height, width = IMAGE_HEIGHT // 2, IMAGE_WIDTH // 2
        # Half-resolution pixel j covers full-resolution pixels 2j and 2j + 1 (centres at integers).
        u, v = np.meshgrid(2.0 * np.arange(width) + 0.5, 2.0 * np.arange(height) + 0.5)
        pixels = np.stack([u, v, np.ones_like(u)], axis=-1).reshape(-1, 3)
        rays = pixels @ np.linalg.inv(spec.intrinsic).T @ self.rotation.T  # ego-frame directions
        # The cameras are level, so the ground fills whole rows: every row below the horizon.
        ground_rows = (rays[:, 2] < 0).reshape(height, width).all(axis=1)
        self._ground_start = int(np.argmax(ground_rows)) * width  # first ground pixel (flat index)
        ground = slice(self._ground_start, None)
        scale = self.translation[2] / -rays[ground, 2]
        distance = scale * np.linalg.norm(rays[ground], axis=1)
        self._ground_xy = self.translation[:2] + scale[:, None] * rays[ground, :2]
        keep = fog_keep(distance)[:, None]
        self._ground_gain = 255.0 * keep  # ground pixel = colour * gain + haze, in 0..255
        self._ground_haze = 255.0 * (1.0 - keep) * SKY_HORIZON.astype(np.float32) + 0.5
        elevation = np.arctan2(rays[:, 2], np.hypot(rays[:, 0], rays[:, 1]))
        mix = np.clip(elevation / 0.6, 0.0, 1.0)[:, None]
        self._sky = np.round(255.0 * (SKY_HORIZON * (1 - mix) + SKY_TOP * mix)).astype(np.uint8)

    def pose(self, ego_xy: np.ndarray, ego_yaw: float) -> tuple[np.ndarray, np.ndarray]:
        """Camera -> global rotation and camera position for an ego pose on the ground plane."""
        cos, sin = np.cos(ego_yaw), np.sin(ego_yaw)
        ego_rotation = np.array([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]])
        position = np.array([ego_xy[0], ego_xy[1], 0.0]) + ego_rotation @ self.translation
        return ego_rotation @ self.rotation, position

    def render(
        self,
        road: Road,
        ego_xy: np.ndarray,
        ego_yaw: float,
        centres: np.ndarray,
        sizes: np.ndarray,
        yaws: np.ndarray,
        colours: np.ndarray,
    ) -> np.ndarray:
        """RGB uint8 image [900, 1600, 3] of the ground and the given global boxes."""
        cos, sin = np.cos(ego_yaw), np.sin(ego_yaw)
        ground_xy = ego_xy + self._ground_xy @ np.array([[cos, sin], [-sin, cos]])
        ground_colour, _ = road.surface(ground_xy)
        canvas = self._sky.copy()
        canvas[self._ground_start :] = np.minimum(
            ground_colour * self._ground_gain + self._ground_haze, 255.0
        )
        canvas = canvas.reshape(IMAGE_HEIGHT // 2, IMAGE_WIDTH // 2, 3)
        image = cv2.resize(canvas, (IMAGE_WIDTH, IMAGE_HEIGHT), interpolation=cv2.INTER_LINEAR)
        self._draw_boxes(image, ego_xy, ego_yaw, centres, sizes, yaws, colours)
        return image

    def _draw_boxes(
        self,
        image: np.ndarray,
        ego_xy: np.ndarray,
        ego_yaw: float,
        centres: np.ndarray,
        sizes: np.ndarray,
        yaws: np.ndarray,
        colours: np.ndarray,
    ) -> None:
        rotation, position = self.pose(ego_xy, ego_yaw)
        corners = box_corners(centres, sizes, yaws)
        corners_cam = (corners - position) @ rotation  # global -> camera frame
        distance = np.linalg.norm(centres - position, axis=1)
        in_front = corners_cam[..., 2] > NEAR
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = corners_cam @ self.spec.intrinsic.T
            uv = uv[..., :2] / uv[..., 2:3]
        low, high = uv.min(axis=1), uv.max(axis=1)  # image bounds; unbounded if a corner is behind
        low[~in_front.all(axis=1)], high[~in_front.all(axis=1)] = -np.inf, np.inf
        candidates = np.flatnonzero(
            in_front.any(axis=1)
            & (distance < MAX_BOX_DISTANCE)
            & (low[:, 0] < IMAGE_WIDTH)
            & (low[:, 1] < IMAGE_HEIGHT)
            & (high[:, 0] > 0)
            & (high[:, 1] > 0)
        )
        if len(candidates) == 0:
            return
        order = _paint_order(
            corners[candidates][:, FOOTPRINT, :2],
            yaws[candidates],
            position[:2],
            np.concatenate([low[candidates], high[candidates]], axis=1),
            distance[candidates],
        )
        # Per face of every candidate: outward normal, centre, whether it faces the camera, colour.
        cos, sin = np.cos(yaws[candidates]), np.sin(yaws[candidates])
        rotations = np.zeros((len(candidates), 3, 3))
        rotations[:, 0, 0], rotations[:, 0, 1], rotations[:, 1, 0], rotations[:, 1, 1] = cos, -sin, sin, cos
        rotations[:, 2, 2] = 1.0
        normals = np.einsum("mij,fj->mfi", rotations, FACE_NORMALS)  # [M, 6, 3] in the global frame
        centres_of_faces = corners[candidates][:, FACE_LOOPS].mean(axis=2)
        to_eye = position - centres_of_faces
        facing = (normals * to_eye).sum(axis=-1) > 0
        shade = 0.45 + 0.55 * (0.5 + 0.5 * normals @ SUN)
        keep = fog_keep(np.linalg.norm(to_eye, axis=-1))[..., None]
        rgb = colours[candidates][:, None, :] * shade[..., None] * keep + SKY_HORIZON * (1.0 - keep)
        fills = np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.int64)
        intrinsic = self.spec.intrinsic
        for m in order:
            i = candidates[m]
            for f in np.flatnonzero(facing[m]):
                polygon = _clip_near(corners_cam[i, FACE_LOOPS[f]])
                if len(polygon) < 3:
                    continue
                uv = polygon @ intrinsic.T
                pixels = np.round(uv[:, :2] / uv[:, 2:3] * 16).astype(np.int32)  # 4 fractional bits
                fill = tuple(int(c) for c in fills[m, f])
                cv2.fillPoly(image, [pixels], fill, lineType=cv2.LINE_8, shift=4)
                cv2.polylines(
                    image, [pixels], True, tuple(c * 3 // 5 for c in fill), 1, lineType=cv2.LINE_8, shift=4
                )


def _clip_near(polygon: np.ndarray) -> np.ndarray:
    """Clip a camera-frame polygon [K, 3] to z >= NEAR (Sutherland-Hodgman, one plane)."""
    inside = polygon[:, 2] >= NEAR
    if inside.all():
        return polygon
    out = []
    for k in range(len(polygon)):
        p, q = polygon[k], polygon[(k + 1) % len(polygon)]
        if inside[k]:
            out.append(p)
        if inside[k] != inside[(k + 1) % len(polygon)]:
            out.append(p + (NEAR - p[2]) / (q[2] - p[2]) * (q - p))
    return np.array(out).reshape(-1, 3)


def _paint_order(
    footprints: np.ndarray, yaws: np.ndarray, eye: np.ndarray, bounds: np.ndarray, distance: np.ndarray
) -> list[int]:
    """Indices in drawing order: far to near, except that a box is drawn after every box it hides.

    For two boxes whose image bounds overlap, a vertical separating plane between their footprints
    (from the separating axis test on their edge directions) tells which one is on the camera's
    side, i.e. in front. The resulting constraints are ordered with Kahn's algorithm, farthest first.
    """
    count = len(footprints)
    overlap = (
        (bounds[:, None, 0] < bounds[None, :, 2])
        & (bounds[None, :, 0] < bounds[:, None, 2])
        & (bounds[:, None, 1] < bounds[None, :, 3])
        & (bounds[None, :, 1] < bounds[:, None, 3])
    )
    first, second = np.nonzero(np.triu(overlap, k=1))
    front = _in_front(footprints[first], footprints[second], yaws[first], yaws[second], eye)
    after: list[list[int]] = [[] for _ in range(count)]  # after[a]: boxes to draw after a
    waiting = np.zeros(count, dtype=np.int64)  # boxes that must be drawn before this one
    for a, b, sign in zip(first, second, front, strict=True):
        if sign != 0:
            near_box, far_box = (a, b) if sign > 0 else (b, a)
            after[far_box].append(near_box)
            waiting[near_box] += 1
    heap = [(-distance[i], i) for i in range(count) if waiting[i] == 0]
    heapq.heapify(heap)
    remaining = set(range(count))
    order = []
    while remaining:
        if not heap:  # a cycle (not expected for boxes on a plane): break it at the farthest box
            farthest = max(remaining, key=lambda k: distance[k])
            heap.append((-distance[farthest], farthest))
        _, i = heapq.heappop(heap)
        if i not in remaining:
            continue
        remaining.discard(i)
        order.append(i)
        for j in after[i]:
            waiting[j] -= 1
            if waiting[j] == 0:
                heapq.heappush(heap, (-distance[j], j))
    return order


def _in_front(
    a: np.ndarray, b: np.ndarray, yaw_a: np.ndarray, yaw_b: np.ndarray, eye: np.ndarray
) -> np.ndarray:
    """For pairs of footprints a, b [P, 4, 2]: +1 where a is on the eye's side of a line separating
    it from b, -1 where b is, 0 where no edge direction separates them or the eye lies between
    them (then neither hides the other). Uses the first separating edge direction."""
    angles = np.stack([yaw_a, yaw_a + np.pi / 2, yaw_b, yaw_b + np.pi / 2], axis=1)  # [P, 4]
    axes = np.stack([np.cos(angles), np.sin(angles)], axis=-1)  # [P, 4, 2]
    pa = np.einsum("pkc,pxc->pxk", a, axes)  # [P, axis, corner]
    pb = np.einsum("pkc,pxc->pxk", b, axes)
    pe = axes @ eye  # [P, 4]
    a_low, a_high, b_low, b_high = pa.min(-1), pa.max(-1), pb.min(-1), pb.max(-1)
    a_first, b_first = a_high <= b_low, b_high <= a_low
    a_front = (a_first & (pe <= a_high)) | (b_first & (pe >= a_low))
    b_front = (a_first & (pe >= b_low)) | (b_first & (pe <= b_high))
    axis = np.argmax(a_first | b_first, axis=1)[:, None]
    separated = (a_first | b_first).any(axis=1)
    sign = (
        np.take_along_axis(a_front, axis, 1)[:, 0].astype(np.int64)
        - np.take_along_axis(b_front, axis, 1)[:, 0]
    )
    return np.where(separated, sign, 0)
