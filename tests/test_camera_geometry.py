"""Camera geometry end to end, against expectations computed independently in numpy (float64)."""

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from unikd.data.image_aug import apply_image_aug, ida_matrix, open_reduced
from unikd.models.camera import LSSViewTransform, depth_targets, pixel_to_lidar, resample_bev
from unikd.ops.bev_grid import BEVGrid

# nuScenes CAM_FRONT-like intrinsics for a 1600x900 image
FX, FY, CX, CY = 1266.4, 1266.4, 816.3, 491.5
RESIZE, CROP = 0.44, (30, 140, 734, 396)  # 704x396 resized, crop to 704x256 at the bottom
POINT_RANGE = (-54.0, -54.0, -10.0, 54.0, 54.0, 10.0)
CELL = 0.3


def cam2lidar_rotation(yaw_deg: float) -> np.ndarray:
    """Columns: the camera's x (image right), y (image down), z (optical axis) in the LiDAR frame."""
    yaw = math.radians(yaw_deg)
    forward = np.array([math.cos(yaw), math.sin(yaw), 0.0])
    right = np.array([math.sin(yaw), -math.cos(yaw), 0.0])
    down = np.array([0.0, 0.0, -1.0])
    return np.stack([right, down, forward], axis=1)


def camera(yaw_deg: float, position: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    rotation, centre = cam2lidar_rotation(yaw_deg), np.asarray(position)
    lidar2cam = np.eye(4)
    lidar2cam[:3, :3] = rotation.T
    lidar2cam[:3, 3] = -rotation.T @ centre
    cam2img = np.eye(4)
    cam2img[:3, :3] = [[FX, 0.0, CX], [0.0, FY, CY], [0.0, 0.0, 1.0]]
    return lidar2cam, cam2img


def bda(
    rotation_deg: float, scale: float, flip_y: bool, translation: tuple[float, float, float]
) -> np.ndarray:
    angle = math.radians(rotation_deg)
    rotate = np.array(
        [[math.cos(angle), -math.sin(angle), 0.0], [math.sin(angle), math.cos(angle), 0.0], [0, 0, 1]]
    )
    matrix = np.eye(4)
    matrix[:3, :3] = np.diag([1.0, -1.0 if flip_y else 1.0, 1.0]) @ (scale * rotate)
    matrix[:3, 3] = translation
    return matrix


def augment_pixel(u: float, v: float, flip: bool) -> tuple[float, float]:
    """Resize (pixel centres), crop, mirror within the 704-wide crop; written out by hand."""
    u1 = RESIZE * (u + 0.5) - 0.5 - CROP[0]
    v1 = RESIZE * (v + 0.5) - 0.5 - CROP[1]
    return (703.0 - u1 if flip else u1), v1


def unaugment_pixel(u: float, v: float, flip: bool) -> tuple[float, float]:
    u1 = 703.0 - u if flip else u
    return (u1 + CROP[0] + 0.5) / RESIZE - 0.5, (v + CROP[1] + 0.5) / RESIZE - 0.5


def expected_cell(point: np.ndarray) -> tuple[int, int]:
    """(row from y, col from x) on the 0.3 m grid over [-54, 54]."""
    return math.floor((point[1] + 54.0) / CELL), math.floor((point[0] + 54.0) / CELL)


def tensor(array: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(array), dtype=torch.float32)


FRONT_LEFT = camera(55.0, (1.0, 0.6, -0.3))
BACK = camera(-170.0, (-0.9, 0.1, -0.2))
BDA = bda(30.0, 1.05, True, (0.5, -0.3, 0.1))


def test_ida_matrix_matches_hand_formula_and_pil_image():
    matrix = ida_matrix(RESIZE, CROP, True, 0.0)
    for u, v in [(1006.0, 554.0), (120.5, 800.0)]:
        np.testing.assert_allclose((matrix @ [u, v, 0, 1])[:2], augment_pixel(u, v, flip=True), atol=1e-9)

    width, height = 1600, 900
    for params in [
        dict(resize=RESIZE, crop=CROP, flip=True, rotate_deg=0.0),
        dict(resize=0.6, crop=(17, 9, 617, 409), flip=True, rotate_deg=-7.3),
        dict(resize=0.5, crop=(-10, 20, 790, 420), flip=False, rotate_deg=12.0),
    ]:
        for u, v in [(820, 600), (402, 505)]:
            pixels = np.zeros((height, width), dtype=np.uint8)
            pixels[v - 3 : v + 4, u - 3 : u + 4] = 255  # a 7x7 mark centred on (u, v)
            out = np.asarray(apply_image_aug(Image.fromarray(pixels), **params), dtype=np.float64)
            assert out.shape == (params["crop"][3] - params["crop"][1], params["crop"][2] - params["crop"][0])
            rows, cols = np.mgrid[: out.shape[0], : out.shape[1]]
            centroid = np.array([(out * cols).sum(), (out * rows).sum()]) / out.sum()
            np.testing.assert_allclose(centroid, (ida_matrix(**params) @ [u, v, 0, 1])[:2], atol=0.1)


@pytest.mark.parametrize("resize", [0.23, 0.38, 0.44, 0.48])  # decoded at 1/4, then at 1/2 (nuScenes' range)
def test_a_reduced_jpeg_decode_keeps_the_ida_geometry(resize: float) -> None:
    width, height = 1600, 900
    final_w, final_h = int(352 * resize / 0.23), int(128 * resize / 0.23)
    params = dict(resize=resize, crop=(13, int(height * resize) - final_h, 13 + final_w, int(height * resize)),
                  flip=True, rotate_deg=-4.1)
    for u, v in [(830, 610), (411, 707)]:
        pixels = np.zeros((height, width), dtype=np.uint8)
        pixels[v - 6 : v + 7, u - 6 : u + 7] = 255  # a 13x13 mark centred on (u, v)
        buffer = io.BytesIO()
        Image.fromarray(pixels).convert("RGB").save(buffer, format="JPEG", quality=95)
        with Image.open(buffer) as file:
            reduced, original_size = open_reduced(file, resize)
        assert original_size == (width, height) and reduced.width < width / 1.9
        out = np.asarray(apply_image_aug(reduced, **params, original_size=original_size), np.float64).mean(axis=2)
        assert out.shape == (final_h, final_w)
        rows, cols = np.mgrid[: out.shape[0], : out.shape[1]]
        centroid = np.array([(out * cols).sum(), (out * rows).sum()]) / out.sum()
        np.testing.assert_allclose(centroid, (ida_matrix(**params) @ [u, v, 0, 1])[:2], atol=0.15)


def test_projected_point_lifts_back_to_bda_point_in_the_right_cell():
    lidar2cam, cam2img = FRONT_LEFT
    point = np.array([9.1, 17.3, -0.8, 1.0])  # in view of the camera, asymmetric in x and y
    cam = lidar2cam @ point
    depth = cam[2]
    assert depth > 5.0
    u, v = FX * cam[0] / depth + CX, FY * cam[1] / depth + CY
    u_aug, v_aug = augment_pixel(u, v, flip=True)
    assert 0 <= u_aug < 704 and 0 <= v_aug < 256

    lifted = pixel_to_lidar(
        tensor([[[[u_aug, v_aug]]]]),
        tensor([[[depth]]]),
        tensor(lidar2cam)[None, None],
        tensor(cam2img)[None, None],
        tensor(ida_matrix(RESIZE, CROP, True, 0.0))[None, None],
        tensor(BDA)[None],
    )[0, 0, 0].double()
    target = BDA @ point
    np.testing.assert_allclose(lifted.numpy(), target[:3], atol=2e-3)
    assert expected_cell(lifted.numpy()) == expected_cell(target)
    assert expected_cell(target) != expected_cell(point)  # bda really moves the point


def pixel_point(lidar2cam, bda_matrix, flip, u_aug, v_aug, depth):
    """Augmented-LiDAR point seen at augmented pixel (u_aug, v_aug) and `depth`, inverted by hand."""
    u, v = unaugment_pixel(u_aug, v_aug, flip)
    cam = np.array([(u - CX) * depth / FX, (v - CY) * depth / FY, depth, 1.0])
    return bda_matrix @ np.linalg.inv(lidar2cam) @ cam


def frustum_point(lidar2cam, bda_matrix, flip, row, col, depth, stride=8):
    """The point of feature cell (row, col) (its centre pixel) at `depth`."""
    return pixel_point(
        lidar2cam, bda_matrix, flip, (col + 0.5) * stride - 0.5, (row + 0.5) * stride - 0.5, depth
    )


class FixedDepthNet(nn.Module):
    def __init__(self, output: torch.Tensor):
        super().__init__()
        self.output = output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output


def test_frustum_splat_lights_the_expected_bev_cell_per_sample():
    transform = LSSViewTransform(
        in_channels=4, context_channels=3, feature_stride=8, bev_downsample=1, point_cloud_range=POINT_RANGE
    )
    bins, height, width = transform.num_bins, 32, 88
    # sample 0: front-left camera, flipped image, bda; sample 1: back camera, no flip, identity bda
    samples = [
        dict(camera=0, flip=True, bda=BDA, row=20, col=61, bin=37),
        dict(camera=1, flip=False, bda=np.eye(4), row=25, col=13, bin=70),
    ]
    cams = [FRONT_LEFT, BACK]
    lidar2cam = tensor(np.stack([[c[0] for c in cams]] * 2))
    cam2img = tensor(np.stack([[c[1] for c in cams]] * 2))
    img_aug = tensor(np.stack([[ida_matrix(RESIZE, CROP, s["flip"], 0.0)] * 2 for s in samples]))
    bda_t = tensor(np.stack([s["bda"] for s in samples]))

    logits = torch.full((2, 2, bins + 3, height, width), -30.0)
    logits[:, :, bins:] = 0.0  # no context anywhere ...
    for b, s in enumerate(samples):
        logits[b, s["camera"], s["bin"], s["row"], s["col"]] = 30.0  # ... except one pixel, at one depth
        logits[b, s["camera"], bins:, s["row"], s["col"]] = torch.tensor([1.0, 2.0, 3.0])
    transform.depth_net = FixedDepthNet(logits.flatten(0, 1))
    bev, depth_probs = transform(torch.zeros(2, 2, 4, height, width), lidar2cam, cam2img, img_aug, bda_t)

    assert bev.shape == (2, 3, 360, 360) and depth_probs.shape == (2, 2, bins, height, width)
    for b, s in enumerate(samples):
        depth = 1.0 + (s["bin"] + 0.5) * 0.5
        point = frustum_point(cams[s["camera"]][0], s["bda"], s["flip"], s["row"], s["col"], depth)
        row, col = expected_cell(point)
        assert row != col
        lit = (bev[b].abs().sum(0) > 0.5).nonzero().tolist()
        assert lit == [[row, col]], f"sample {b}: lit {lit}, expected {[row, col]} for point {point[:3]}"
        torch.testing.assert_close(bev[b, :, row, col], torch.tensor([1.0, 2.0, 3.0]), atol=1e-4, rtol=1e-4)
        points = transform.frustum_points(lidar2cam, cam2img, img_aug, bda_t, (height, width))
        np.testing.assert_allclose(
            points[b, s["camera"], s["bin"], s["row"], s["col"]].double().numpy(), point[:3], atol=2e-3
        )


def test_geometry_is_cached_by_matrix_values():
    transform = LSSViewTransform(in_channels=4, context_channels=3, depth_bins=(1.0, 60.0, 4.0), bev_cell=1.2)
    lidar2cam, cam2img = (tensor(m)[None, None] for m in FRONT_LEFT)
    img_aug = tensor(ida_matrix(RESIZE, CROP, False, 0.0))[None, None]
    first = transform.geometry(lidar2cam, cam2img, img_aug, tensor(BDA)[None], (32, 88))
    again = transform.geometry(lidar2cam.clone(), cam2img, img_aug, tensor(BDA)[None], (32, 88))
    assert again is first
    moved = transform.geometry(lidar2cam, cam2img, img_aug, torch.eye(4)[None], (32, 88))
    assert moved is not first and not torch.equal(moved[1], first[1])


def test_geometry_of_inference_tensors():
    """-e runs under inference mode, whose tensors have no version counter: the geometry is built and cached."""
    transform = LSSViewTransform(in_channels=4, context_channels=3, depth_bins=(1.0, 60.0, 4.0), bev_cell=1.2)
    with torch.inference_mode():
        lidar2cam, cam2img = (tensor(m)[None, None] for m in FRONT_LEFT)
        img_aug = tensor(ida_matrix(RESIZE, CROP, False, 0.0))[None, None]
        first = transform.geometry(lidar2cam, cam2img, img_aug, tensor(BDA)[None], (32, 88))
        again = transform.geometry(lidar2cam.clone(), cam2img, img_aug, tensor(BDA)[None], (32, 88))
    assert again is first and first[0].numel() > 0


def test_frustum_points_stay_float32_under_autocast():
    transform = LSSViewTransform(in_channels=4, context_channels=3, depth_bins=(1.0, 60.0, 4.0), bev_cell=1.2)
    lidar2cam, cam2img = (tensor(m)[None, None] for m in FRONT_LEFT)
    img_aug = tensor(ida_matrix(RESIZE, CROP, False, 0.0))[None, None]
    reference = transform.frustum_points(lidar2cam, cam2img, img_aug, tensor(BDA)[None], (32, 88))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = transform.frustum_points(lidar2cam, cam2img, img_aug, tensor(BDA)[None], (32, 88))
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, reference)


def test_resample_bev_keeps_rows_as_y_and_columns_as_x():
    source = BEVGrid.from_range(POINT_RANGE, 0.3)
    target = source.resized(180, 180)
    bev = torch.zeros(1, 1, 360, 360)
    bev[0, 0, 100:102, 250:252] = 1.0  # the 2x2 block of output cell (50, 125)
    out = resample_bev(bev, source, target)
    assert out.shape == (1, 1, 180, 180)
    assert out[0, 0].argmax().item() == 50 * 180 + 125 and out.max().item() == pytest.approx(1.0)


def test_depth_targets_take_the_nearest_point_per_feature_cell():
    lidar2cam, cam2img = FRONT_LEFT
    centre = np.linalg.inv(lidar2cam)[:3, 3]
    forward = cam2lidar_rotation(55.0)[:, 2]
    near = np.append(centre + 12.2 * forward, 1.0)  # on the optical axis at depth 12.2 ...
    far = np.append(centre + 30.0 * forward, 1.0)  # ... and behind it in the same cell
    behind = np.append(centre - 10.0 * forward, 1.0)  # behind the camera: ignored
    # u = 87.7 lies in pixel 88, the first pixel of feature column 11
    edge = pixel_point(lidar2cam, np.eye(4), True, 87.7, 99.5, 20.2)
    too_near = pixel_point(lidar2cam, np.eye(4), True, 400.5, 200.5, 0.6)  # depth < 1 m: no target
    points = np.stack([near, far, behind, edge, too_near]) @ BDA.T  # the batch holds augmented-frame points
    targets = depth_targets(
        [tensor(points[:, :3])],
        tensor(lidar2cam)[None, None],
        tensor(cam2img)[None, None],
        tensor(ida_matrix(RESIZE, CROP, True, 0.0))[None, None],
        tensor(BDA)[None],
        image_size=(256, 704),
        feature_stride=8,
        depth_bins=(1.0, 60.0, 0.5),
    )
    assert targets.shape == (1, 1, 32, 88)
    u_aug, v_aug = augment_pixel(CX, CY, flip=True)
    row, col = math.floor((v_aug + 0.5) / 8), math.floor((u_aug + 0.5) / 8)
    assert (targets >= 0).sum() == 2
    assert targets[0, 0, row, col] == math.floor((12.2 - 1.0) / 0.5)
    assert targets[0, 0, 12, 11] == math.floor((20.2 - 1.0) / 0.5)
