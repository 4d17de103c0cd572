"""The Swin backbone (against a naive attention loop and nn.Unfold), the DepthLSS depth net, and the camera
options: each combination builds, runs and passes gradients; wrong settings are clear errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from unikd.models.bevfusion import BEVFusion
from unikd.models.camera import CameraBEVEncoder, LSSViewTransform
from unikd.models.camera.swin import PatchMerging, ShiftWindowMSA, SwinTransformer
from unikd.models.configs import model_config

TINY_SWIN = {"embed_dims": 8, "depths": (2, 2, 2), "num_heads": (1, 2, 2), "window_size": 3}


def naive_window_attention(module: ShiftWindowMSA, x: torch.Tensor) -> torch.Tensor:
    """ShiftWindowMSA on [1, H, W, C] by loops over tokens: pad to window multiples with zero tokens, roll by
    -shift, attend within each window to the keys whose source did not wrap around (along rows, along
    columns) exactly when the query's did, with the bias of the offset (dy, dx); roll back, crop."""
    window, shift, msa = module.window, module.shift, module.w_msa
    _, height, width, channels = x.shape
    heads, head_dims = msa.num_heads, channels // msa.num_heads
    padded_height, padded_width = math.ceil(height / window) * window, math.ceil(width / window) * window
    padded = torch.zeros(padded_height, padded_width, channels)
    padded[:height, :width] = x[0]
    rolled = torch.roll(padded, shifts=(-shift, -shift), dims=(0, 1))
    q, k, v = msa.qkv(rolled).view(padded_height, padded_width, 3, heads, head_dims).unbind(2)
    table = msa.relative_position_bias_table
    out = torch.zeros(padded_height, padded_width, channels)
    for row in range(padded_height):
        for col in range(padded_width):
            top, left = row // window * window, col // window * window
            keys = [(r, c) for r in range(top, top + window) for c in range(left, left + window)]
            wrapped = (row >= padded_height - shift, col >= padded_width - shift)
            heads_out = []
            for head in range(heads):
                logits = []
                for r, c in keys:
                    offset = (row - r + window - 1) * (2 * window - 1) + (col - c + window - 1)
                    logit = q[row, col, head] @ k[r, c, head] / math.sqrt(head_dims) + table[offset, head]
                    if shift and (r >= padded_height - shift, c >= padded_width - shift) != wrapped:
                        logit = logit - 100.0
                    logits.append(logit)
                weights = torch.stack(logits).softmax(0)
                heads_out.append(sum(w * v[r, c, head] for w, (r, c) in zip(weights, keys, strict=True)))
            out[row, col] = msa.proj(torch.cat(heads_out))
    return torch.roll(out, shifts=(shift, shift), dims=(0, 1))[None, :height, :width]


@pytest.mark.parametrize("shift", [0, 1])
def test_shifted_window_attention_equals_a_naive_masked_attention(shift: int) -> None:
    torch.manual_seed(0)
    module = ShiftWindowMSA(
        embed_dims=4, num_heads=2, window=3, shift=shift, qkv_bias=True, drop_path_rate=0.0
    )
    with torch.no_grad():
        module.w_msa.relative_position_bias_table.normal_()
    x = torch.randn(1, 5, 7, 4)  # padded to 6 x 9: two by three windows
    with torch.no_grad():
        torch.testing.assert_close(module(x), naive_window_attention(module, x), atol=1e-5, rtol=1e-5)


def test_patch_merging_is_unfold_then_norm_then_reduction() -> None:
    torch.manual_seed(0)
    merging = PatchMerging(3, 5)
    x = torch.randn(2, 5, 7, 3)  # odd sizes: padded at the bottom and right
    unfolded = F.unfold(F.pad(x.permute(0, 3, 1, 2), (0, 1, 0, 1)), kernel_size=2, stride=2).transpose(1, 2)
    expected = merging.reduction(merging.norm(unfolded)).view(2, 3, 4, 5)
    torch.testing.assert_close(merging(x), expected)


def test_swin_stage_shapes_strides_and_drop_path_only_in_training() -> None:
    torch.manual_seed(0)
    model = SwinTransformer(**TINY_SWIN, out_indices=(1, 2), drop_path_rate=0.5)
    assert model.out_channels == [16, 32] and model.out_strides == [8, 16]
    image = torch.randn(2, 3, 60, 90)  # not multiples of the patch or the windows
    model.eval()
    outs = model(image)
    assert [tuple(o.shape) for o in outs] == [(2, 16, 8, 12), (2, 32, 4, 6)]
    plain = SwinTransformer(**TINY_SWIN, out_indices=(1, 2), drop_path_rate=0.0).eval()
    plain.load_state_dict(model.state_dict())
    torch.testing.assert_close(plain(image)[1], outs[1])
    model.train()
    assert not torch.allclose(model(image)[1], outs[1])
    with pytest.raises(ValueError, match="ending at the last stage"):
        SwinTransformer(**TINY_SWIN, out_indices=(0, 1))
    with pytest.raises(ValueError, match="one entry per stage"):
        SwinTransformer(embed_dims=8, depths=(2, 2), num_heads=(1,), out_indices=(1,))


def front_and_left_cameras(image_size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Two level cameras at the origin looking along +x and +y, principal point at the image centre."""
    height, width = image_size
    lidar2cam = []
    for yaw in (0.0, math.pi / 2):
        forward = torch.tensor([math.cos(yaw), math.sin(yaw), 0.0])
        right = torch.tensor([math.sin(yaw), -math.cos(yaw), 0.0])
        cam2lidar = torch.eye(4)
        cam2lidar[:3, :3] = torch.stack([right, torch.tensor([0.0, 0.0, -1.0]), forward], dim=1)
        lidar2cam.append(torch.linalg.inv(cam2lidar))
    cam2img = torch.eye(4)
    cam2img[:3, :3] = torch.tensor(
        [[width / 2, 0.0, (width - 1) / 2], [0.0, width / 2, (height - 1) / 2], [0.0, 0.0, 1.0]]
    )
    return {
        "lidar2cam": torch.stack(lidar2cam)[None],
        "cam2img": cam2img.expand(1, 2, 4, 4),
        "img_aug": torch.eye(4).expand(1, 2, 4, 4),
        "bda": torch.eye(4)[None],
    }


SMALL_RANGE = (-16.0, -16.0, -5.0, 16.0, 16.0, 3.0)
OPTIONS = {
    "resnet, 3x3+1x1": {"backbone": "resnet", "backbone_depth": 18, "base_width": 8},
    "swin, 3x3+1x1": {"backbone": "swin", "swin": TINY_SWIN, "out_indices": (1, 2)},
    "swin, depth_lss": {
        "backbone": "swin",
        "swin": TINY_SWIN,
        "out_indices": (1, 2),
        "depth_net": "depth_lss",
        "geometry": "bevdepth",
        "splat_z_range": (-10.0, 10.0),
    },
    "resnet, depth_lss": {
        "backbone": "resnet",
        "backbone_depth": 18,
        "base_width": 8,
        "depth_net": "depth_lss",
    },
}


@pytest.mark.parametrize("name", list(OPTIONS))
def test_each_camera_option_builds_runs_and_passes_gradients(name: str) -> None:
    torch.manual_seed(0)
    encoder = CameraBEVEncoder(
        **OPTIONS[name],
        neck_channels=16,
        context_channels=8,
        depth_bins=(1.0, 17.0, 1.0),
        point_cloud_range=SMALL_RANGE,
        bev_cell=0.5,
    )
    matrices = front_and_left_cameras((32, 64))
    xyz = torch.rand(300, 3) * torch.tensor([14.0, 14.0, 2.0]) + torch.tensor([1.0, 1.0, -1.0])
    points = [torch.cat([xyz, torch.zeros(300, 2)], 1)]
    output = encoder(torch.randn(1, 2, 3, 32, 64), **matrices, points=points)
    assert output.bev.shape == (1, 8, 32, 32) and output.depth_probs.shape == (1, 2, 16, 4, 8)
    (output.bev.square().mean() + output.depth_probs.square().mean()).backward()
    first_backbone = next(encoder.backbone.parameters())
    checked = {
        "backbone": first_backbone,
        "neck": next(encoder.neck.parameters()),
        "downsample": next(encoder.view_transform.downsample.parameters()),
    }
    if "depth_lss" in name:
        # reached through the depth image
        checked["dtransform"] = encoder.view_transform.depth_net.dtransform[0].weight
    for part, parameter in checked.items():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, part


def test_depth_lss_reads_the_points_and_other_depth_nets_do_not() -> None:
    torch.manual_seed(0)
    matrices = front_and_left_cameras((32, 64))
    features = torch.randn(1, 2, 4, 4, 8)
    near = [torch.tensor([[6.0, 0.5, 0.0, 0.0, 0.0], [0.3, 5.0, 0.2, 0.0, 0.0]])]
    far = [near[0] * torch.tensor([2.0, 2.0, 2.0, 1.0, 1.0])]
    common = {
        "in_channels": 4,
        "context_channels": 3,
        "depth_bins": (1.0, 17.0, 1.0),
        "point_cloud_range": SMALL_RANGE,
        "bev_cell": 0.5,
    }
    depth_lss = LSSViewTransform(**common, depth_net="depth_lss").eval()
    plain = LSSViewTransform(**common).eval()
    with torch.no_grad():
        assert not torch.allclose(
            depth_lss(features, **matrices, points=near)[1], depth_lss(features, **matrices, points=far)[1]
        )
        torch.testing.assert_close(
            plain(features, **matrices, points=near)[1], plain(features, **matrices, points=far)[1]
        )
    with pytest.raises(ValueError, match="pass the batch's points"):
        depth_lss(features, **matrices)


def test_wrong_camera_settings_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="camera backbone must be one of"):
        CameraBEVEncoder(backbone="vit")
    with pytest.raises(ValueError, match="swin backbone takes no backbone_depth"):
        CameraBEVEncoder(backbone="swin", backbone_depth=50)
    with pytest.raises(ValueError, match="resnet backbone takes no swin settings"):
        CameraBEVEncoder(backbone="resnet", swin=TINY_SWIN)
    with pytest.raises(ValueError, match="does not apply to the swin backbone"):
        CameraBEVEncoder(backbone="swin", swin=TINY_SWIN, out_indices=(1, 2), pretrained="resnet50.pth")
    with pytest.raises(ValueError, match="reads features at stride 8, got stride 16"):
        CameraBEVEncoder(backbone_depth=18, base_width=8, out_indices=(2, 3), depth_net="depth_lss")
    with pytest.raises(ValueError, match="depth_net must be one of"):
        LSSViewTransform(depth_net="depthlss")
    with pytest.raises(ValueError, match="splat_z_range"):
        LSSViewTransform(splat_z_range=(3.0, -5.0))
    config = model_config("small_bevfusion", ("camera",))
    with pytest.raises(ValueError, match="camera-only detector has no LiDAR"):
        BEVFusion(config)


def test_small_bevfusion_size_trains_a_step_with_the_points_in_its_camera(synthetic_root) -> None:
    from unikd.data.collate import collate_batch
    from unikd.data.nuscenes_dataset import NuScenesDetectionDataset
    from unikd.models.configs import image_aug_for

    torch.manual_seed(0)
    config = model_config("small_bevfusion", ("lidar", "camera"))
    assert config["camera"]["backbone"] == "swin" and config["camera"]["depth_net"] == "depth_lss"
    dataset = NuScenesDetectionDataset(
        synthetic_root,
        "v1.0-mini",
        "mini_train",
        config["point_cloud_range"],
        num_sweeps=2,
        use_camera=True,
        image_aug=image_aug_for("small_bevfusion"),
    )
    batch = collate_batch([dataset[0]])
    model = BEVFusion(config).train()
    losses = model.loss(model(batch), batch)
    assert "depth" not in losses and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    dtransform = model.camera.view_transform.depth_net.dtransform[0].weight
    assert dtransform.grad is not None and dtransform.grad.abs().sum() > 0
