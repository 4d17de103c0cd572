"""mmdet3d BEVFusion's camera branch (Swin-T, GeneralizedLSSFPN, DepthLSSTransform) as unikd's camera module:
the full-width key list, parity with mmdet3d's own modules at every level (fixtures made by
tools/make_bevfusion_camera_fixtures.py), the geometry entries, and the BEV orientation at an asymmetric place."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from parity import assert_close, with_overrides

from unikd.exps.checkpoints import check_state_dict
from unikd.interop.bevfusion_camera import (
    GEOMETRY_KEYS,
    camera_to_unikd,
    check_geometry,
    unikd_camera_key,
    unikd_camera_tensor,
)
from unikd.models.camera import CameraBEVEncoder, LSSViewTransform
from unikd.models.camera.depth_lss import lidar_depth_image
from unikd.models.configs import BEVFUSION_CAMERA, NUSCENES_RANGE

FIXTURES = Path(__file__).parent / "fixtures" / "bevfusion"


def bevfusion_config(overrides: dict | None = None) -> dict:
    """{point_cloud_range, camera}: BEVFUSION_CAMERA over the nuScenes range, with `overrides` (dotted paths)."""
    config = {"point_cloud_range": NUSCENES_RANGE, "camera": copy.deepcopy(BEVFUSION_CAMERA)}
    with_overrides(config, overrides)
    return config


def camera_encoder(config: dict) -> CameraBEVEncoder:
    return CameraBEVEncoder(point_cloud_range=config["point_cloud_range"], **config["camera"]).eval()


def part(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {
        key.removeprefix(prefix + "."): value for key, value in state.items() if key.startswith(prefix + ".")
    }


@pytest.fixture(scope="module")
def fixture() -> dict:
    loaded = torch.load(FIXTURES / "camera_parity.pt", weights_only=True)
    # stored as float16 / int16 (the reference ran on these values in float32 / int64)
    loaded["state_dict"] = {
        key: value.float() if value.is_floating_point() else value.long()
        for key, value in loaded["state_dict"].items()
    }
    return loaded


def test_full_width_keys_convert_without_a_missing_unexpected_or_misshaped_key() -> None:
    listed = json.loads((FIXTURES / "camera_keys.json").read_text())
    source = {key: torch.zeros(shape) for key, shape in listed["keys"].items()}
    assert set(GEOMETRY_KEYS) <= set(source)
    converted, unmapped = camera_to_unikd(source)
    assert unmapped == []
    encoder = CameraBEVEncoder(point_cloud_range=NUSCENES_RANGE, **BEVFUSION_CAMERA)
    expected = {f"camera.{key}": value for key, value in encoder.state_dict().items()}
    # raises on any mismatch
    check_state_dict(converted, expected, "key list", f"mmdet3d {listed['config']}", {})
    assert len(converted) == len(source) - len(GEOMETRY_KEYS) == len(expected)
    # the frustum of 256 x 704 images at stride 8 with 118 depth bins
    assert listed["keys"]["view_transform.frustum"] == [118, 32, 88, 3]
    assert listed["keys"]["view_transform.depthnet.6.weight"] == [118 + 80, 256, 1, 1]


def test_key_names() -> None:
    assert unikd_camera_key("img_backbone.stages.2.blocks.5.attn.w_msa.qkv.weight", 2) == (
        "camera.backbone.stages.2.blocks.5.attn.w_msa.qkv.weight"
    )
    # GeneralizedLSSFPN numbers its levels from the shallowest, LSSFPN from the deepest
    assert unikd_camera_key("img_neck.lateral_convs.0.conv.weight", 2) == "camera.neck.lateral.1.0.weight"
    assert unikd_camera_key("img_neck.fpn_convs.1.bn.running_var", 2) == "camera.neck.smooth.0.1.running_var"
    assert (
        unikd_camera_key("view_transform.dtransform.6.weight", 2)
        == "camera.view_transform.depth_net.dtransform.6.weight"
    )
    assert (
        unikd_camera_key("view_transform.depthnet.4.bias", 2)
        == "camera.view_transform.depth_net.depthnet.4.bias"
    )
    assert (
        unikd_camera_key("view_transform.downsample.7.running_mean", 2)
        == "camera.view_transform.downsample.2.1.running_mean"
    )
    assert unikd_camera_key("view_transform.frustum", 2) is None
    assert unikd_camera_key("pts_backbone.blocks.0.0.weight", 2) is None


def test_a_downsample_kernel_on_the_transposed_map_gives_the_transposed_output() -> None:
    """mmdet3d's stride-2 downsample on its x-major map, and unikd's with the converted (transposed) kernels on
    the y-major map of the same cells: the same values at the same (x, y), also from one cell at (x, y) = (7, 2)."""
    torch.manual_seed(0)
    convs = [torch.nn.Conv2d(3, 3, 3, stride=stride, padding=1, bias=False) for stride in (1, 2, 1)]
    x_major = torch.zeros(1, 3, 12, 10)  # [B, C, X, Y]
    x_major[0, :, 7, 2] = torch.tensor([1.0, -2.0, 0.5])
    for source in (x_major, torch.randn(1, 3, 12, 10)):
        theirs, ours = source, source.transpose(-1, -2)
        for index, conv in enumerate(convs):
            theirs = conv(theirs)
            converted = unikd_camera_tensor(
                f"view_transform.downsample.{3 * index}.weight", conv.weight.detach()
            )
            ours = torch.nn.functional.conv2d(ours, converted, stride=conv.stride, padding=1)
        torch.testing.assert_close(ours, theirs.transpose(-1, -2))
    # without the transposition the single cell would spread differently (the kernels are not symmetric)
    plain = x_major.transpose(-1, -2)
    for conv in convs:
        plain = conv(plain)
    assert (plain - theirs.transpose(-1, -2)).abs().max() > 1e-3


def test_converted_camera_branch_matches_mmdet3d_at_every_level(fixture: dict) -> None:
    config = bevfusion_config(fixture["unikd_overrides"])
    check_geometry(fixture["state_dict"], config, image_size=fixture["imgs"].shape[-2:])
    converted, unmapped = camera_to_unikd(fixture["state_dict"])
    assert unmapped == []
    encoder = camera_encoder(config)
    # mmdet's relative position index (a buffer in its state dict) is the one unikd builds
    index_key = "backbone.stages.0.blocks.1.attn.w_msa.relative_position_index"
    assert torch.equal(encoder.state_dict()[index_key], converted[f"camera.{index_key}"])
    encoder.load_state_dict(part(converted, "camera"), strict=True)

    imgs, points = fixture["imgs"].float(), [fixture["points"]]
    matrices = {key: fixture[key][None] for key in ("lidar2cam", "cam2img", "img_aug", "bda")}
    splat = {}
    hook = encoder.view_transform.downsample.register_forward_pre_hook(
        lambda module, args: splat.update(bev=args[0])
    )
    with torch.no_grad():
        levels = encoder.backbone(imgs)
        neck = encoder.neck(levels)
        depth_image = lidar_depth_image(points, **matrices, image_size=tuple(imgs.shape[-2:]))[0, :, 0]
        bev, depth = encoder.view_transform(neck[None], **matrices, points=points)
        whole = encoder(imgs[None], **matrices, points=points)
    hook.remove()

    for index, (level, where, theirs) in enumerate(
        zip(levels, fixture["backbone_positions"], fixture["backbone"], strict=True)
    ):
        where = where.long()
        assert_close(level[where[:, 0], :, where[:, 1], where[:, 2]], theirs, f"backbone[{index}]")
    where = fixture["neck_positions"].long()
    assert_close(neck[where[:, 0], :, where[:, 1], where[:, 2]], fixture["neck"], "neck")

    pixels = fixture["depth_image_pixels"].long()
    assert torch.equal(torch.nonzero(depth_image), pixels)  # the same pixels written, in the same order
    assert len(pixels) > 1000
    assert_close(
        depth_image[pixels[:, 0], pixels[:, 1], pixels[:, 2]], fixture["depth_image_values"], "depth image"
    )

    where = fixture["depth_positions"].long()
    assert_close(depth[0][where[:, 0], :, where[:, 1], where[:, 2]], fixture["depth_probs"], "depth_probs")
    point_index, _ = encoder.view_transform.geometry(*matrices.values(), tuple(neck.shape[-2:]))
    assert len(point_index) == fixture["pooled_points"]
    assert list(splat["bev"].shape) == fixture["splat_shape"]
    assert_close(
        splat["bev"][0].flatten(1)[:, fixture["splat_cells"].long()],
        fixture["splat"],
        "BEV before downsampling",
    )
    assert list(bev.shape) == fixture["bev_shape"]
    assert_close(bev[0].flatten(1)[:, fixture["bev_cells"].long()], fixture["bev"], "BEV")
    torch.testing.assert_close(whole.bev, bev)


def test_geometry_of_another_grid_or_image_is_an_error(fixture: dict) -> None:
    state = fixture["state_dict"]
    config = bevfusion_config(fixture["unikd_overrides"])
    with pytest.raises(ValueError, match="dx.*bx"):
        check_geometry(state, {**config, "camera": {**config["camera"], "splat_z_range": (-5.0, 3.0)}})
    with pytest.raises(ValueError, match="depths"):
        check_geometry(state, {**config, "camera": {**config["camera"], "depth_bins": (1.0, 25.0, 0.5)}})
    with pytest.raises(ValueError, match="pixel_extent.*feature_size"):
        check_geometry(state, config, image_size=(128, 352))


@pytest.mark.parametrize("mirror_y", [False, True])
def test_a_feature_in_front_left_lands_in_the_cell_of_its_x_and_y(mirror_y: bool) -> None:
    """BEVFusion's view transform in unikd (depth_lss net, bevdepth frustum, z in [-10, 10]): a camera at the
    origin looking at (20, 10) (front-left); the one feature cell's ray at the depth bin of 22 m lifts to
    x = 22 cos(yaw), y = 22 sin(yaw), and lights the splat cell of row y, column x (a transposed layout would
    light row 245, column 212); with a BEV mirror of y it moves to -y."""
    yaw = math.atan2(10.0, 20.0)
    forward = torch.tensor([math.cos(yaw), math.sin(yaw), 0.0])
    right = torch.tensor([math.sin(yaw), -math.cos(yaw), 0.0])
    cam2lidar = torch.eye(4)
    cam2lidar[:3, :3] = torch.stack([right, torch.tensor([0.0, 0.0, -1.0]), forward], dim=1)
    cam2img = torch.eye(4)
    cam2img[:2, :2] = 100.0 * torch.eye(2)  # principal point at pixel (0, 0): the frustum's one cell
    bda = torch.diag(torch.tensor([1.0, -1.0 if mirror_y else 1.0, 1.0, 1.0]))
    transform = LSSViewTransform(
        in_channels=2,
        context_channels=1,
        feature_stride=8,
        depth_bins=(2.0, 58.0, 0.5),
        point_cloud_range=NUSCENES_RANGE,
        bev_cell=0.3,
        bev_downsample=2,
        depth_net="depth_lss",
        geometry="bevdepth",
        splat_z_range=(-10.0, 10.0),
    ).eval()
    depth_bin = 40  # starts at 22 m
    with torch.no_grad():
        final = transform.depth_net.depthnet[-1]
        final.weight.zero_(), final.bias.zero_()
        final.bias[depth_bin] = 50.0  # one-hot depth
        final.bias[transform.num_bins] = 1.0  # context 1
    splat = {}
    transform.downsample.register_forward_pre_hook(lambda module, args: splat.update(bev=args[0]))
    features = torch.randn(1, 1, 2, 1, 1)  # one feature cell: an 8 x 8 image
    matrices = (
        torch.linalg.inv(cam2lidar)[None, None],
        cam2img[None, None],
        torch.eye(4)[None, None],
        bda[None],
    )
    with torch.no_grad():
        transform(features, *matrices, points=[torch.zeros(0, 5)])
    x, y = 22.0 * math.cos(yaw), 22.0 * math.sin(yaw) * (-1.0 if mirror_y else 1.0)
    row, col = int((y + 54.0) / 0.3), int((x + 54.0) / 0.3)
    assert (row, col) == ((147, 245) if mirror_y else (212, 245))
    lit = torch.nonzero(splat["bev"][0, 0] > 1e-6)  # the other depth bins carry e^-50
    assert lit.tolist() == [[row, col]]
    assert splat["bev"][0, 0, row, col] == pytest.approx(1.0, abs=1e-6)


def test_depth_image_pixels_depths_and_the_nearest_point_of_a_pixel() -> None:
    """Points in front of a camera at hand-computed pixels (u = f X / Z + c_x, row floor(v), column floor(u));
    two on one pixel keep the nearer; behind the camera or off the image: none. Through a BEV mirror of y and
    an image flip."""
    cam2lidar = torch.eye(4)
    cam2lidar[:3, :3] = torch.tensor([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])  # looks along +x
    cam2img = torch.eye(4)
    cam2img[:3, :3] = torch.tensor([[20.0, 0.0, 10.3], [0.0, 20.0, 6.2], [0.0, 0.0, 1.0]])
    flip = torch.eye(4)
    flip[0, 0], flip[0, 3] = -1.0, 31.0  # u -> 31 - u on a 32-wide image
    bda = torch.diag(torch.tensor([1.0, -1.0, 1.0, 1.0]))
    # LiDAR (x forward, y left, z up) -> camera (X = -y, Y = -z, Z = x); given in the augmented frame (y mirrored)
    original = torch.tensor(
        [[10.0, -3.0, 1.0], [5.0, 2.0, -0.5], [10.5, -3.05, 1.02], [-4.0, 0.0, 0.0], [10.0, 30.0, 0.0]]
    )
    points = torch.cat([original * torch.tensor([1.0, -1.0, 1.0]), torch.zeros(5, 2)], 1)
    image = lidar_depth_image(
        [points],
        torch.linalg.inv(cam2lidar)[None, None],
        cam2img[None, None],
        flip[None, None],
        bda[None],
        (16, 32),
    )
    expected = torch.zeros(16, 32)
    for x, y, z in original[:2].tolist():
        u, v = 20.0 * -y / x + 10.3, 20.0 * -z / x + 6.2
        expected[math.floor(v), math.floor(31.0 - u)] = x
    assert image.shape == (1, 1, 1, 16, 32)
    # point 2 shares point 0's pixel, farther; 3 is behind the camera; 4 off the image
    torch.testing.assert_close(image[0, 0, 0], expected)
