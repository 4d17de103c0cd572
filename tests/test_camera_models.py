import math

import numpy as np
import pytest
import torch

from unikd.data.image_aug import ida_matrix
from unikd.models.camera import LSSFPN, CameraBEVEncoder, ResNet, load_torchvision_state_dict
from unikd.models.fuser import ConvFuser
from unikd.ops.bev_grid import BEVGrid


def bn_shapes(prefix: str, channels: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.{name}": (channels,) for name in ("weight", "bias", "running_mean", "running_var")}


def torchvision_resnet18_shapes() -> dict[str, tuple[int, ...]]:
    """torchvision's resnet18 state dict (key -> shape), written out by hand, without num_batches_tracked."""
    shapes = {"conv1.weight": (64, 3, 7, 7), **bn_shapes("bn1", 64)}
    in_channels = 64
    for layer, channels in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            prefix = f"layer{layer}.{block}"
            block_in = in_channels if block == 0 else channels
            shapes[f"{prefix}.conv1.weight"] = (channels, block_in, 3, 3)
            shapes.update(bn_shapes(f"{prefix}.bn1", channels))
            shapes[f"{prefix}.conv2.weight"] = (channels, channels, 3, 3)
            shapes.update(bn_shapes(f"{prefix}.bn2", channels))
            if block == 0 and layer > 1:
                shapes[f"{prefix}.downsample.0.weight"] = (channels, in_channels, 1, 1)
                shapes.update(bn_shapes(f"{prefix}.downsample.1", channels))
        in_channels = channels
    shapes["fc.weight"], shapes["fc.bias"] = (1000, 512), (1000,)
    return shapes


def test_resnet_layouts_match_torchvision():
    own = ResNet(18, out_indices=(0, 1, 2, 3)).state_dict()
    own_shapes = {k: tuple(v.shape) for k, v in own.items() if not k.endswith("num_batches_tracked")}
    expected = torchvision_resnet18_shapes()
    del expected["fc.weight"], expected["fc.bias"]
    assert own_shapes == expected

    def count(model):
        return sum(p.numel() for p in model.parameters())

    # torchvision: resnet18 11,689,512 and resnet50 25,557,032 parameters, fc included
    assert count(ResNet(18, (0, 1, 2, 3))) == 11_689_512 - (512 * 1000 + 1000)
    resnet50 = ResNet(50, (1, 2, 3))
    assert count(resnet50) == 25_557_032 - (2048 * 1000 + 1000)
    assert resnet50.out_channels == [512, 1024, 2048] and resnet50.out_strides == [8, 16, 32]
    assert resnet50.layer2[0].conv2.stride == (2, 2)  # v1.5: the stride sits on the 3x3 conv


def test_resnet_stage_outputs_and_narrow_variant():
    model = ResNet(18, out_indices=(1, 2, 3), base_width=16)
    outs = model(torch.randn(2, 3, 64, 176))
    assert [tuple(o.shape) for o in outs] == [(2, 32, 8, 22), (2, 64, 4, 11), (2, 128, 2, 6)]
    assert not hasattr(ResNet(18, out_indices=(0, 1)), "layer3")
    with pytest.raises(ValueError):
        ResNet(34)
    with pytest.raises(ValueError):
        ResNet(18, out_indices=(3, 1))


def save_resnet18_file(path, drop=(), reshape=None, extra=()):
    generator = torch.Generator().manual_seed(0)
    state = {k: torch.randn(s, generator=generator) for k, s in torchvision_resnet18_shapes().items()}
    for key in drop:
        del state[key]
    if reshape:
        state[reshape[0]] = torch.zeros(reshape[1])
    for key in extra:
        state[key] = torch.zeros(1)
    torch.save(state, path)
    return state


def test_load_torchvision_state_dict(tmp_path):
    path = tmp_path / "resnet18.pth"
    state = save_resnet18_file(path)
    model = ResNet(18, out_indices=(1, 2, 3))
    load_torchvision_state_dict(model, path)
    torch.testing.assert_close(model.layer3[1].conv2.weight.data, state["layer3.1.conv2.weight"])
    torch.testing.assert_close(
        model.layer2[0].downsample[1].running_var, state["layer2.0.downsample.1.running_var"]
    )
    torch.testing.assert_close(model.conv1.weight.data, state["conv1.weight"])

    truncated = ResNet(18, out_indices=(0, 1))  # layer3/layer4 are not built: their keys are skipped
    load_torchvision_state_dict(truncated, path)
    torch.testing.assert_close(truncated.layer2[1].bn1.bias.data, state["layer2.1.bn1.bias"])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(drop=["layer2.0.downsample.1.running_mean"]), "layer2.0.downsample.1.running_mean"),
        (dict(reshape=("layer1.1.conv2.weight", (64, 64, 1, 1))), "layer1.1.conv2.weight"),
        (dict(extra=["layer1.0.conv3.weight"]), "layer1.0.conv3.weight"),
    ],
)
def test_load_torchvision_state_dict_rejects_mismatches(tmp_path, kwargs, message):
    path = tmp_path / "bad.pth"
    save_resnet18_file(path, **kwargs)
    with pytest.raises(ValueError, match=message):
        load_torchvision_state_dict(ResNet(18), path)


def test_resnet50_weights_do_not_load_into_resnet18(tmp_path):
    path = tmp_path / "resnet50.pth"
    torch.save(ResNet(50, (0, 1, 2, 3), base_width=8).state_dict(), path)
    with pytest.raises(ValueError, match="mis-shaped"):
        load_torchvision_state_dict(ResNet(18, base_width=8), path)


def test_lss_fpn_fuses_to_the_shallowest_stride():
    features = [torch.randn(2, 32, 8, 22), torch.randn(2, 64, 4, 11), torch.randn(2, 128, 2, 6)]
    assert LSSFPN([32, 64, 128], 24)(features).shape == (2, 24, 8, 22)
    assert LSSFPN([64, 128], 24)(features[1:]).shape == (2, 24, 4, 11)


def test_conv_fuser():
    fuser = ConvFuser([8, 16], 12)
    out = fuser([torch.randn(2, 8, 5, 7), torch.randn(2, 16, 5, 7)])
    assert out.shape == (2, 12, 5, 7) and (out >= 0).all()
    with pytest.raises(ValueError, match="channels"):
        fuser([torch.randn(2, 16, 5, 7), torch.randn(2, 8, 5, 7)])
    with pytest.raises(ValueError, match="size"):
        fuser([torch.randn(2, 8, 5, 7), torch.randn(2, 16, 7, 5)])


# --- the encoder on tiny images: 2 cameras of 64x176 (nuScenes 1600x900 resized by 0.11 and cropped)

FX, CX, CY = 1266.4, 816.3, 491.5
RANGE = (-54.0, -54.0, -10.0, 54.0, 54.0, 10.0)


def rig(batch: int) -> dict[str, torch.Tensor]:
    lidar2cam, cam2img, img_aug = [], [], []
    for yaw in (90.0, -90.0):  # looking along LiDAR +y and -y
        forward = np.array([math.cos(math.radians(yaw)), math.sin(math.radians(yaw)), 0.0])
        right = np.array([forward[1], -forward[0], 0.0])
        rotation = np.stack([right, [0.0, 0.0, -1.0], forward], axis=1)  # camera axes in LiDAR frame
        matrix = np.eye(4)
        matrix[:3, :3] = rotation.T
        matrix[:3, 3] = -rotation.T @ np.array([0.0, 0.0, 1.5])
        lidar2cam.append(matrix)
        intrinsics = np.eye(4)
        intrinsics[:3, :3] = [[FX, 0, CX], [0, FX, CY], [0, 0, 1]]
        cam2img.append(intrinsics)
        img_aug.append(ida_matrix(0.11, (0, 35, 176, 99), yaw < 0, 0.0))

    def stack(ms):
        return torch.as_tensor(np.stack([ms] * batch), dtype=torch.float32)

    return dict(
        lidar2cam=stack(lidar2cam),
        cam2img=stack(cam2img),
        img_aug=stack(img_aug),
        bda=torch.eye(4).repeat(batch, 1, 1),
    )


def lidar_points(matrices: dict[str, torch.Tensor], seed: int) -> list[torch.Tensor]:
    """Points seen by the cameras: random camera-frame points in the lower image half at 3-50 m."""
    generator = torch.Generator().manual_seed(seed)
    clouds = []
    for b in range(matrices["bda"].shape[0]):
        per_camera = []
        for n in range(matrices["lidar2cam"].shape[1]):
            depth = 3.0 + 47.0 * torch.rand(3000, generator=generator)
            u = 1600.0 * torch.rand(3000, generator=generator)
            v = 450.0 + 450.0 * torch.rand(3000, generator=generator)
            cam = torch.stack(
                [(u - CX) * depth / FX, (v - CY) * depth / FX, depth, torch.ones_like(depth)], dim=1
            )
            per_camera.append(cam @ torch.linalg.inv(matrices["lidar2cam"][b, n]).T)
        clouds.append(torch.cat(per_camera)[:, :3])
    return clouds


def tiny_encoder() -> CameraBEVEncoder:
    return CameraBEVEncoder(
        backbone_depth=18,
        base_width=16,
        neck_channels=32,
        context_channels=16,
        depth_bins=(1.0, 60.0, 2.0),
        point_cloud_range=RANGE,
        bev_cell=1.2,
        output_grid=BEVGrid.from_range(RANGE, 1.8),
    )


def test_camera_bev_encoder_forward_backward():
    torch.manual_seed(0)
    encoder = tiny_encoder()
    matrices = rig(batch=2)
    out = encoder(torch.randn(2, 2, 3, 64, 176), **matrices)
    assert out.bev.shape == (2, 16, 60, 60)
    assert out.depth_probs.shape == (2, 2, 30, 8, 22)
    torch.testing.assert_close(out.depth_probs.sum(2), torch.ones(2, 2, 8, 22))
    out.bev.square().mean().backward()
    grad = encoder.backbone.conv1.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    with pytest.raises(ValueError, match="multiple"):
        encoder(torch.randn(1, 2, 3, 60, 176), **rig(batch=1))


def test_depth_loss_is_finite_and_decreases():
    torch.manual_seed(0)
    encoder = tiny_encoder()
    matrices = rig(batch=2)
    imgs = torch.randn(2, 2, 3, 64, 176)
    points = lidar_points(matrices, seed=0)
    optimizer = torch.optim.Adam(encoder.parameters(), lr=2e-3)
    losses = []
    for _ in range(6):
        out = encoder(imgs, **matrices)
        loss = encoder.depth_loss(out.depth_probs, points, **matrices)
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses


def test_reference_defaults():
    encoder = CameraBEVEncoder()
    assert encoder.feature_stride == 8 and encoder.out_channels == 80
    assert encoder.view_transform.num_bins == 118
    assert encoder.view_transform.splat_grid.height == 360
    assert (encoder.output_grid.height, encoder.output_grid.width) == (180, 180)
    assert encoder.backbone.out_channels == [512, 1024, 2048]
