"""Parts chosen by registries: a configuration names a head, a fuser, a depth net or a camera backbone;
an unknown name lists the registered ones (in the CLI too), and a part registered elsewhere (here, in
the test) is built by `BEVFusion` from a configuration that names it, with its settings."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from unikd.exps.cli import run_cli
from unikd.exps.exp_files import load_exp_class
from unikd.models.bevfusion import BEVFusion
from unikd.models.camera import LSSViewTransform
from unikd.models.configs import model_config
from unikd.models.registry import CAMERA_BACKBONES, DEPTH_NETS, FUSERS, HEADS
from unikd.registry import Registry

EXP_DIR = Path(__file__).resolve().parents[1] / "exps/nuscenes/BEVFusion"


class StridedBackbone(nn.Module):
    """Two stages at strides 8 and 16 (widths `width`, 2 x `width`)."""

    def __init__(self, out_indices: tuple[int, ...], width: int = 4):
        super().__init__()
        self.out_indices = out_indices
        self.stage1 = nn.Conv2d(3, width, 8, stride=8)
        self.stage2 = nn.Conv2d(width, 2 * width, 2, stride=2)
        self.out_channels = [width, 2 * width]
        self.out_strides = [8, 16]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        first = self.stage1(x)
        return [first, self.stage2(first)]


class UniformDepthNet(nn.Module):
    """Equal depth logits in every bin; context from a 1x1 conv."""

    needs_points = False
    feature_stride = 8

    def __init__(self, in_channels: int, num_bins: int, context_channels: int):
        super().__init__()
        self.num_bins = num_bins
        self.context = nn.Conv2d(in_channels, context_channels, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        logits = features.new_zeros(features.shape[0], self.num_bins, *features.shape[-2:])
        return torch.cat([logits, self.context(features)], dim=1)


class SumFuser(nn.Module):
    """`scale` x the sum of each input's 1x1 projection to `out_channels`."""

    def __init__(self, in_channels: list[int], out_channels: int, scale: float):
        super().__init__()
        self.projections = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.scale = scale

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return self.scale * sum(p(x) for p, x in zip(self.projections, inputs, strict=True))


def sum_fuser(in_channels: list[int], config: dict, grid_size: tuple[int, int], scale: float = 1.0) -> SumFuser:
    return SumFuser(in_channels, config["fuser_channels"], scale)


class HeatmapHead(nn.Module):
    """A 1x1 conv to `num_classes` heatmaps."""

    def __init__(self, in_channels: int, grid, num_classes: int = 1):
        super().__init__()
        self.grid = grid
        self.conv = nn.Conv2d(in_channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"heatmap": self.conv(x)}


@pytest.fixture
def test_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each registry as it is, plus one part of the test's, registered as a user would; undone afterwards."""
    for registry in (HEADS, FUSERS, DEPTH_NETS, CAMERA_BACKBONES):
        monkeypatch.setattr(registry, "_choices", dict(registry._choices))
    CAMERA_BACKBONES.register("strided")(StridedBackbone)
    DEPTH_NETS.register("uniform")(UniformDepthNet)
    FUSERS.register("sum")(sum_fuser)
    HEADS.register("heatmap")(HeatmapHead)


def camera_batch(batch: int = 2, image: tuple[int, int] = (32, 64)) -> dict:
    """One front camera 1.5 m above the LiDAR looking along +x, and a few LiDAR points in front of it."""
    height, width = image
    lidar2cam = torch.tensor(
        [[0.0, -1.0, 0.0, 0.0], [0.0, 0.0, -1.0, 1.5], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
    )
    cam2img = torch.tensor(
        [[32.0, 0.0, width / 2, 0.0], [0.0, 32.0, height / 2, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
    )
    generator = torch.Generator().manual_seed(0)
    points = [torch.cat([torch.rand(200, 3, generator=generator) * torch.tensor([40.0, 20.0, 2.0])
                         + torch.tensor([2.0, -10.0, -1.0]), torch.zeros(200, 2)], dim=1) for _ in range(batch)]
    return {
        "imgs": torch.randn(batch, 1, 3, height, width, generator=generator),
        "lidar2cam": lidar2cam.expand(batch, 1, 4, 4),
        "cam2img": cam2img.expand(batch, 1, 4, 4),
        "img_aug": torch.eye(4).expand(batch, 1, 4, 4),
        "bda": torch.eye(4).expand(batch, 4, 4),
        "points": points,
    }


def test_unknown_part_names_the_registered_ones() -> None:
    fusion = model_config("small", ("camera", "lidar"))
    cases = [
        ({**fusion, "head": {"type": "centre"}}, "config head.type must be one of ('center', 'transfusion'), got 'centre'"),
        ({**fusion, "fuser": {"type": "add"}}, "config 'fuser' type must be one of ('conv', 'mgfm'), got 'add'"),
        ({**fusion, "camera": {**fusion["camera"], "depth_net": "lidar"}},
         "camera depth_net must be one of ('1x1', '3x3+1x1', 'depth_lss'), got 'lidar'"),
        ({**fusion, "camera": {**fusion["camera"], "backbone": "vit"}},
         "camera backbone must be one of ('resnet', 'swin'), got 'vit'"),
    ]
    for config, message in cases:
        with pytest.raises(ValueError) as error:
            BEVFusion(config)
        assert str(error.value) == message
    with pytest.raises(ValueError, match=r"head 'center' is already registered \(CenterHead\)"):
        HEADS.register("center")(HeatmapHead)


def test_unknown_head_in_the_command_line_names_the_registered_ones(tmp_path: Path) -> None:
    exp_class = load_exp_class(EXP_DIR / "BEVFusion_nuscenes_transfusion_lidar_exp.py")
    argv = ["--data_root", str(tmp_path / "nuscenes"), "--output_root", str(tmp_path / "outputs"), "-b", "1",
            "--exp_options", "model_size=small_transfusion", "model_config.head.type=centre"]
    with pytest.raises(ValueError, match=r"config head.type must be one of \('center', 'transfusion'\), got 'centre'"):
        run_cli(exp_class, argv)
    assert not (tmp_path / "outputs").exists()


def test_registry_lists_names_and_builds_with_arguments() -> None:
    registry = Registry("widget", "config widget.type")
    registry.register("pair")(lambda a, b=0: (a, b))
    assert "pair" in registry and "other" not in registry and registry.names == ("pair",)
    assert registry.build("pair", 1, b=2) == (1, 2)
    with pytest.raises(ValueError, match=r"^config widget.type must be one of \('pair',\), got 'pear'$"):
        registry.lookup("pear")


def test_registry_is_a_mapping_in_registration_order_and_refuses_a_second_registration() -> None:
    registry = Registry("colour", "config colour")
    for name, value in (("red", 3), ("blue", 1), ("green", 2)):
        assert registry.add(name, value) == value
    assert list(registry) == ["red", "blue", "green"] and dict(registry) == {"red": 3, "blue": 1, "green": 2}
    assert registry.names == ("blue", "green", "red") and len(registry) == 3 and registry.get("pink") is None
    with pytest.raises(ValueError, match=r"^colour 'blue' is already registered$"):
        registry.add("blue", 4)
    assert registry["blue"] == 1


def test_registered_parts_are_built_from_the_configuration(test_parts: None) -> None:
    config = model_config("small", ("camera", "lidar"))
    config["camera"] = {
        **{k: v for k, v in config["camera"].items() if k not in ("backbone_depth", "base_width", "pretrained")},
        "backbone": "strided", "width": 6, "out_indices": (0, 1), "depth_net": "uniform",
    }
    config["fuser"] = {"type": "sum", "scale": 0.5}
    config["head"] = {"type": "heatmap", "num_classes": 3}
    torch.manual_seed(0)
    model = BEVFusion(config).eval()
    backbone = model.camera.backbone
    assert isinstance(backbone, StridedBackbone) and backbone.out_indices == (0, 1) and backbone.out_channels == [6, 12]
    assert isinstance(model.camera.view_transform.depth_net, UniformDepthNet)
    assert isinstance(model.fuser, SumFuser) and model.fuser.scale == 0.5
    assert isinstance(model.head, HeatmapHead) and model.head.grid == model.grid

    with torch.no_grad():
        outputs = model(camera_batch())
        num_bins = model.camera.view_transform.num_bins
        torch.testing.assert_close(outputs["depth_probs"], torch.full_like(outputs["depth_probs"], 1 / num_bins))
        projections = model.fuser.projections  # camera first, then LiDAR
        fused = 0.5 * (projections[0](outputs["camera_bev"]) + projections[1](outputs["middle_encoder"]))
        torch.testing.assert_close(outputs["bev"], fused)
        torch.testing.assert_close(outputs["head"]["heatmap"], model.head.conv(outputs["neck"]))
    assert outputs["head"]["heatmap"].shape == (2, 3, model.grid.height, model.grid.width)
    assert math.isclose(outputs["depth_probs"].sum(dim=2).mean().item(), 1.0, rel_tol=1e-6)

    with pytest.raises(ValueError, match="depth_net 'uniform' reads features at stride 8, got stride 16"):
        LSSViewTransform(feature_stride=16, depth_net="uniform")
