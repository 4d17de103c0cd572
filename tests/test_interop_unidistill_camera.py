"""UniDistill's camera and fusion encoders as unikd modules: full-width key lists, parity with UniDistill's
own LSSFPN and FusionEncoder (fixtures made by tools/make_unidistill_camera_fixtures.py), the geometry
buffers, and the BEV orientation at an asymmetric place."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from parity import assert_close, with_overrides

from unikd.exps.checkpoints import check_state_dict
from unikd.interop.unidistill_camera import (
    GEOMETRY_BUFFERS,
    camera_to_unikd,
    check_geometry_buffers,
    rgb_input,
    unikd_camera_key,
    unikd_camera_tensor,
)
from unikd.models.bevfusion import BEVFusion
from unikd.models.camera import CameraBEVEncoder, LSSViewTransform
from unikd.models.camera.fpn import image_neck
from unikd.models.configs import NUSCENES_RANGE, model_config
from unikd.models.fuser import ConvFuser
from unikd.ops.bev_grid import BEVGrid

FIXTURES = Path(__file__).parent / "fixtures" / "unidistill"
GRID = BEVGrid.from_range(NUSCENES_RANGE, 0.6)
SIZES = {"camera_keys": ("unidistill_camera", ("camera",)), "fusion_camera_keys": ("unidistill_fusion", ("lidar", "camera"))}


def unidistill_config(overrides: dict | None = None) -> dict:
    """The configuration of size unidistill_camera with `overrides` (dotted paths)."""
    config = model_config("unidistill_camera", ("camera",))
    with_overrides(config, overrides)
    return config


def camera_encoder(config: dict) -> CameraBEVEncoder:
    """The camera branch as unikd's BEVFusion builds it (output on the 0.6 m decoder grid)."""
    return CameraBEVEncoder(point_cloud_range=config["point_cloud_range"], output_grid=GRID, **config["camera"]).eval()


def prefixed(module: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{key}": value for key, value in module.state_dict().items()}


def part(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key.removeprefix(prefix + "."): value for key, value in state.items() if key.startswith(prefix + ".")}


@pytest.mark.parametrize("name", ["camera_keys", "fusion_camera_keys"])
def test_full_width_key_lists_convert_without_a_missing_unexpected_or_misshaped_key(name: str) -> None:
    listed = json.loads((FIXTURES / f"{name}.json").read_text())
    assert listed["prefixes"] == ["model.", ""]
    source = {key: torch.zeros(shape) for key, shape in listed["keys"].items()}
    assert set(GEOMETRY_BUFFERS) <= set(source)
    size, modalities = SIZES[name]
    model = BEVFusion(model_config(size, modalities))
    expected = {k: v for k, v in model.state_dict().items() if k.split(".")[0] in ("camera", "fuser")}
    assert any(k.startswith("fuser.attention.") for k in expected) == (name == "fusion_camera_keys")
    converted, unmapped = camera_to_unikd(source)
    assert unmapped == []
    check_state_dict(converted, expected, "key list", f"UniDistill {listed['experiment']}", {})  # raises on any mismatch
    assert len(converted) == len(source) - len(GEOMETRY_BUFFERS)


def test_key_names_and_layouts() -> None:
    assert (
        unikd_camera_key("camera_encoder.backbone.img_backbone.layer1.0.downsample.0.weight")
        == "camera.backbone.layer1.0.downsample.0.weight"
    )
    assert unikd_camera_key("camera_encoder.backbone.img_neck.deblocks.2.1.running_mean") == "camera.neck.blocks.2.1.running_mean"
    assert unikd_camera_key("camera_encoder.backbone.depth_net.0.bias") == "camera.view_transform.depth_net.0.bias"
    assert unikd_camera_key("fusion_encoder.att.1.weight") == "fuser.attention.1.weight"
    assert unikd_camera_key("fusion_encoder.reduce_conv.1.num_batches_tracked") == "fuser.1.num_batches_tracked"
    assert unikd_camera_key("camera_encoder.backbone.frustum") is None
    assert unikd_camera_key("lidar_encoder.backbone_3d.conv_input.0.weight") is None
    # a 1x1 transposed conv [in, out] is a 1x1 conv [out, in]; strided convs and deconvs keep their layout
    deconv = torch.nn.ConvTranspose2d(6, 4, 1, bias=False)
    conv = torch.nn.Conv2d(6, 4, 1, bias=False)
    conv.weight.data = unikd_camera_tensor("camera_encoder.backbone.img_neck.deblocks.2.0.weight", deconv.weight.data)
    x = torch.randn(2, 6, 3, 5)
    torch.testing.assert_close(conv(x), deconv(x))
    kernel = torch.randn(4, 6, 2, 2)
    assert unikd_camera_tensor("camera_encoder.backbone.img_neck.deblocks.3.0.weight", kernel) is kernel


def test_fusion_channel_order_becomes_camera_then_lidar() -> None:
    """UniDistill's gate and conv over cat(lidar, camera), rewritten, give the same map over cat(camera, lidar)."""
    torch.manual_seed(0)
    lidar, camera = torch.randn(1, 3, 6, 5), torch.randn(1, 3, 6, 5)
    gate = torch.nn.Conv2d(6, 6, 1)
    reduce = torch.nn.Conv2d(6, 4, 3, padding=1, bias=False)
    x = torch.cat([lidar, camera], 1)
    theirs = reduce(x * torch.sigmoid(gate(x.mean((2, 3), keepdim=True))))
    fuser = ConvFuser([3, 3], 4, channel_attention=True).eval()
    state = {"fusion_encoder.att.1.weight": gate.weight, "fusion_encoder.att.1.bias": gate.bias, "fusion_encoder.reduce_conv.0.weight": reduce.weight}
    converted, _ = camera_to_unikd({k: v.detach() for k, v in state.items()})
    fuser.load_state_dict({**fuser.state_dict(), **part(converted, "fuser")})
    norm = fuser.get_submodule("1")
    norm.running_mean.zero_(), norm.running_var.fill_(1.0 - 1e-5)  # BN an identity
    ours = fuser([camera, lidar])
    torch.testing.assert_close(ours, theirs.relu(), atol=1e-5, rtol=1e-5)


def test_the_rgb_stem_reads_unikds_images_as_unidistill_reads_its_own() -> None:
    """UniDistill's network sees BGR normalised with the RGB statistics; the rewritten stem on unikd's
    normalisation of the same picture gives the same map wherever conv1's window is inside the image."""
    torch.manual_seed(0)
    picture = torch.randint(0, 256, (1, 3, 40, 56)).double()
    mean = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1).double()  # UniDistill's img_norm_cfg
    std = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1).double()
    theirs_input = (picture[:, [2, 1, 0]] - mean) / std
    ours_input = (picture / 255.0 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    conv = torch.nn.Conv2d(3, 8, 7, stride=2, padding=3, bias=False).double()
    norm = torch.nn.BatchNorm2d(8).double().eval()
    norm.running_mean.normal_(), norm.running_var.uniform_(0.5, 1.5)
    state = {"camera.backbone.conv1.weight": conv.weight.detach().clone(), "camera.backbone.bn1.running_mean": norm.running_mean.clone()}
    theirs = norm(conv(theirs_input))
    rgb_input(state)
    conv.weight.data, norm.running_mean = state["camera.backbone.conv1.weight"], state["camera.backbone.bn1.running_mean"]
    ours = norm(conv(ours_input.double()))
    torch.testing.assert_close(ours[..., 2:-2, 2:-2], theirs[..., 2:-2, 2:-2], atol=1e-6, rtol=1e-5)  # float32 statistics
    assert (ours[..., 0, :] - theirs[..., 0, :]).abs().max() > 1e-3  # the padded border: another colour


def test_converted_camera_encoder_matches_unidistill_at_every_level() -> None:
    fixture = torch.load(FIXTURES / "camera_parity.pt", weights_only=True)
    config = unidistill_config(fixture["unikd_overrides"])
    check_geometry_buffers(fixture["state_dict"], config)
    converted, unmapped = camera_to_unikd(fixture["state_dict"], rgb=False)  # exactly UniDistill's function
    assert unmapped == []
    encoder = camera_encoder(config)
    encoder.load_state_dict(part(converted, "camera"), strict=True)
    imgs = fixture["imgs"].float()
    matrices = {key: fixture[key][None] for key in ("lidar2cam", "cam2img", "img_aug", "bda")}
    with torch.no_grad():
        levels = encoder.backbone(imgs)
        neck = encoder.neck(levels)
        bev, depth = encoder.view_transform(neck[None], **matrices)
        whole = encoder(imgs[None], **matrices)
    for index, (level, where, theirs) in enumerate(zip(levels, fixture["backbone_positions"], fixture["backbone"], strict=True)):
        assert_close(level[where[:, 0], :, where[:, 1], where[:, 2]], theirs, f"backbone[{index}]")
    assert_close(neck, fixture["neck"], "neck")
    where = fixture["depth_positions"]
    assert_close(depth[0][where[:, 0], :, where[:, 1], where[:, 2]], fixture["depth_probs"], "depth_probs")
    points, _ = encoder.view_transform.geometry(*matrices.values(), tuple(neck.shape[-2:]))
    assert len(points) == fixture["pooled_points"]
    assert list(bev.shape) == fixture["bev_shape"]
    assert_close(bev[0].flatten(1)[:, fixture["cells"]], fixture["bev"], "bev")
    assert (bev[0].abs().sum(0) > 0).sum() == fixture["bev_occupied"]
    torch.testing.assert_close(whole.bev, bev)

    row, col, size = fixture["fusion_window"]
    assert_close(bev[:, :, row : row + size, col : col + size], fixture["fusion_camera"], "fusion input")
    fuser = ConvFuser([16, 16], 16, channel_attention=True).eval()
    fuser.load_state_dict(part(converted, "fuser"), strict=True)
    with torch.no_grad():
        fused = fuser([fixture["fusion_camera"], fixture["fusion_lidar"]])
    assert_close(fused, fixture["fusion"], "fuser")


def test_geometry_buffers_of_another_grid_are_an_error() -> None:
    state = torch.load(FIXTURES / "camera_parity.pt", weights_only=True)["state_dict"]
    with pytest.raises(ValueError, match="voxel_size.*voxel_coord.*voxel_num"):
        check_geometry_buffers(state, unidistill_config({"camera.bev_cell": 0.8}))
    with pytest.raises(ValueError, match="depths"):
        check_geometry_buffers(state, unidistill_config({"camera.depth_bins": (1.0, 60.0, 0.5)}))


@pytest.mark.parametrize("geometry", ["bevdepth", "unikd"])
@pytest.mark.parametrize("mirror_y", [False, True])
def test_a_feature_in_front_left_lands_in_the_cell_of_its_x_and_y(geometry: str, mirror_y: bool) -> None:
    """A camera at the origin looking at (20, 10) (front-left; yaw about 26.6 degrees): the centre feature cell
    at the depth bin of 22 m lifts to x = 22 cos(yaw), y = 22 sin(yaw); its BEV row follows y, its column x
    (a transposed layout would put it at row 122 or 123, column 106). With a BEV mirror of y it moves to -y."""
    yaw = math.atan2(10.0, 20.0)
    forward = torch.tensor([math.cos(yaw), math.sin(yaw), 0.0])
    right = torch.tensor([math.sin(yaw), -math.cos(yaw), 0.0])
    cam2lidar = torch.eye(4)
    cam2lidar[:3, :3] = torch.stack([right, torch.tensor([0.0, 0.0, -1.0]), forward], dim=1)
    height, width, stride = 3, 11, 16  # the centre cell (1, 5) is the principal point in both conventions
    cam2img = torch.eye(4)
    cam2img[:3, :3] = torch.tensor([[100.0, 0.0, (width * stride - 1) / 2], [0.0, 100.0, (height * stride - 1) / 2], [0.0, 0.0, 1.0]])
    bda = torch.diag(torch.tensor([1.0, -1.0 if mirror_y else 1.0, 1.0, 1.0]))
    transform = LSSViewTransform(
        in_channels=2, context_channels=1, feature_stride=stride, depth_bins=(2.0, 58.0, 0.5),
        point_cloud_range=NUSCENES_RANGE[:2] + (-5.0,) + NUSCENES_RANGE[3:5] + (3.0,), bev_cell=0.6,
        bev_downsample=1, depth_net="1x1", geometry=geometry,
    )
    depth_bin = 40  # [22, 22.5) m
    with torch.no_grad():
        conv = transform.depth_net[0]
        conv.weight.zero_(), conv.bias.zero_()
        conv.bias[depth_bin] = 50.0  # one-hot depth
        conv.weight[transform.num_bins, 0] = 1.0  # context = input channel 0
    features = torch.zeros(1, 1, 2, height, width)
    features[0, 0, 0, 1, 5] = 1.0
    with torch.no_grad():
        bev, _ = transform(features, torch.linalg.inv(cam2lidar)[None, None], cam2img[None, None], torch.eye(4)[None, None], bda[None])
    depth = 22.0 if geometry == "bevdepth" else 22.25  # bin start / bin centre
    x, y = depth * math.cos(yaw), depth * math.sin(yaw) * (-1.0 if mirror_y else 1.0)
    row, col = int((y + 54.0) / 0.6), int((x + 54.0) / 0.6)
    assert (row, col) == {False: (106, 122), True: (73, 122)}[mirror_y] if geometry == "bevdepth" else {False: (106, 123), True: (73, 123)}[mirror_y]
    assert bev[0, 0, row, col] == pytest.approx(1.0, abs=1e-6)
    bev[0, 0, row, col] = 0.0
    assert bev.abs().max() < 1e-6


def test_camera_options_are_checked() -> None:
    neck, channels, stride = image_neck("secondfpn", [16, 32, 64, 128], [4, 8, 16, 32], [8, 8, 8, 8], [0.25, 0.5, 1, 2])
    assert (channels, stride) == (32, 16)
    assert isinstance(neck.blocks[2][0], torch.nn.Conv2d) and neck.blocks[3][0].stride == (2, 2)
    with pytest.raises(ValueError, match="do not bring stages"):
        image_neck("secondfpn", [16, 32, 64, 128], [4, 8, 16, 32], [8, 8, 8, 8], [0.5, 0.5, 1, 2])
    with pytest.raises(ValueError, match="one channel count and one upsample stride per stage"):
        image_neck("secondfpn", [16, 32], [4, 8], 8, [0.5, 1])
    with pytest.raises(ValueError, match="lss neck"):
        image_neck("lss", [16, 32], [4, 8], [8, 8], None)
    with pytest.raises(ValueError, match="image neck must be one of"):
        image_neck("fpn", [16, 32], [4, 8], 8, None)
    with pytest.raises(ValueError, match="geometry must be one of"):
        LSSViewTransform(geometry="bevfusion")
    with pytest.raises(ValueError, match="depth_net must be one of"):
        LSSViewTransform(depth_net="3x3")


def test_convert_tool_writes_a_camera_experiment_checkpoint_and_checks_the_recorded_geometry(tmp_path: Path) -> None:
    import importlib.util

    from unikd.interop.unidistill_camera import expected_geometry_buffers

    spec = importlib.util.spec_from_file_location("convert_checkpoint", Path(__file__).parents[1] / "tools/convert_checkpoint.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    # a UniDistill camera experiment's Lightning checkpoint: its camera encoder, BEV encoder and head
    camera_keys = json.loads((FIXTURES / "camera_keys.json").read_text())["keys"]
    lidar_keys = json.loads((FIXTURES / "lidar_keys.json").read_text())["keys"]
    shapes = {f"model.{key}": shape for key, shape in camera_keys.items()}
    shapes.update({key: shape for key, shape in lidar_keys.items() if not key.startswith("model.lidar_encoder.")})
    generator = torch.Generator().manual_seed(0)
    source = {key: torch.randn(shape, generator=generator) if shape else torch.tensor(7) for key, shape in shapes.items()}
    geometry = expected_geometry_buffers(unidistill_config())
    prefix = "model.camera_encoder.backbone."
    for name in ("voxel_size", "voxel_coord", "voxel_num"):
        source[prefix + name] = geometry[name]
    source[prefix + "frustum"][..., 2] = geometry["depths"].view(-1, 1, 1)
    path = tmp_path / "unidistill_camera.ckpt"
    torch.save({"state_dict": source, "epoch": 19}, path)

    assert tool.convert(path, tmp_path / "unikd.ckpt", None, None, trusted=False) == "unidistill_camera"
    written = torch.load(tmp_path / "unikd.ckpt", weights_only=True)
    assert written["unikd"]["experiment"] == "BEVFusion_nuscenes_centerhead_camera_exp"
    assert written["unikd"]["modalities"] == ["camera"]
    model = BEVFusion(model_config("unidistill_camera", ("camera",)))
    assert set(written["state_dict"]) == {f"model.{key}" for key in model.state_dict()}

    source[prefix + "voxel_size"] = torch.tensor([0.8, 0.8, 8.0])  # a checkpoint made for another grid
    torch.save({"state_dict": source}, path)
    with pytest.raises(SystemExit, match="geometry differs.*voxel_size"):
        tool.convert(path, tmp_path / "other.ckpt", None, None, trusted=False)
    assert not (tmp_path / "other.ckpt").exists()
