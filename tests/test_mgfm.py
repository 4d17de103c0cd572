"""Deformable attention and the modality-general fusion module (MGFM) against independent references."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from test_bevfusion import batch_for

from unikd.exps.exp_files import load_exp_class
from unikd.models.bevfusion import BEVFusion
from unikd.models.configs import model_config
from unikd.models.deformable import DeformableAttention
from unikd.models.fuser import ConvFuser, build_fuser
from unikd.models.mgfm import FusionOutput, ModalityGeneralFusion
from unikd.ops.deformable_attention import cell_centres, deformable_sample


def bilinear(value: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """value [D, H, W] at normalised (x, y): the four cell centres around the point, zero outside the map."""
    _, height, width = value.shape
    u, v = x * width - 0.5, y * height - 0.5  # in cell units, cell centres at integers
    u0, v0 = math.floor(u), math.floor(v)
    total = torch.zeros(value.shape[0], dtype=value.dtype)
    for row, wy in ((v0, 1 - (v - v0)), (v0 + 1, v - v0)):
        for col, wx in ((u0, 1 - (u - u0)), (u0 + 1, u - u0)):
            if 0 <= row < height and 0 <= col < width:
                total += wx * wy * value[:, row, col]
    return total


def test_deformable_sample_matches_a_naive_loop() -> None:
    torch.manual_seed(0)
    batch, queries, heads, points, depth = 2, 5, 2, 3, 3
    values = [torch.randn(batch, heads, depth, 4, 7), torch.randn(batch, heads, depth, 5, 3)]
    locations = torch.rand(batch, queries, heads, 2, points, 2) * 1.4 - 0.2  # some points off the map
    weights = torch.rand(batch, queries, heads, 2, points)
    result = deformable_sample(values, locations, weights)
    assert result.shape == (batch, queries, heads * depth)
    for b in range(batch):
        for n in range(queries):
            for h in range(heads):
                expected = sum(
                    weights[b, n, h, level, p]
                    * bilinear(values[level][b, h], *locations[b, n, h, level, p].tolist())
                    for level in range(2)
                    for p in range(points)
                )
                torch.testing.assert_close(
                    result[b, n, h * depth : (h + 1) * depth], expected, atol=1e-5, rtol=1e-5
                )
    # a map given as None adds nothing
    alone = deformable_sample([None, values[1]], locations, weights)
    torch.testing.assert_close(
        alone, deformable_sample([torch.zeros_like(values[0]), values[1]], locations, weights)
    )


def identity_attention(channels: int, offset: tuple[float, float]) -> DeformableAttention:
    """One head, one point at a fixed offset (cells), values and output passed through unchanged."""
    attention = DeformableAttention(channels, [channels], num_heads=1, num_points=1)
    with torch.no_grad():
        attention.sampling_offsets.bias.copy_(torch.tensor(offset))
        attention.value_projs[0].weight.copy_(torch.eye(channels)[:, :, None, None])
        attention.output_proj.weight.copy_(torch.eye(channels))
    return attention


def test_reference_points_are_each_query_own_cell_rows_along_y() -> None:
    height, width = 3, 6
    centres = cell_centres(height, width)
    assert centres[1 * width + 4].tolist() == pytest.approx([4.5 / 6, 1.5 / 3])  # (x, y) of row 1, column 4
    value = torch.zeros(1, 2, height, width)
    value[0, 0, 1, 4] = 1.0  # an asymmetric cell: row 1 (y), column 4 (x)
    queries = torch.randn(1, height * width, 2)

    def read(offset: tuple[float, float]) -> torch.Tensor:
        with torch.no_grad():
            return identity_attention(2, offset)(queries, centres, [value])[0, :, 0].view(height, width)

    def one_hot(row: int, col: int) -> torch.Tensor:
        plane = torch.zeros(height, width)
        plane[row, col] = 1.0
        return plane

    torch.testing.assert_close(read((0.0, 0.0)), one_hot(1, 4))  # each query reads its own cell
    torch.testing.assert_close(read((1.0, 0.0)), one_hot(1, 3))  # +1 cell in x: the next column
    torch.testing.assert_close(read((0.0, 1.0)), one_hot(0, 4))  # +1 cell in y: the next row
    torch.testing.assert_close(read((0.5, 0.0)), 0.5 * (one_hot(1, 4) + one_hot(1, 3)))  # bilinear halfway


def single_map_attention(attention: DeformableAttention, level: int) -> DeformableAttention:
    """A one-map attention with map `level`'s share of `attention`'s parameters."""
    heads, maps, points = attention.num_heads, attention.num_maps, attention.num_points
    channels = attention.value_projs[level].in_channels
    single = DeformableAttention(attention.embed_dims, [channels], heads, points)
    offsets_w = attention.sampling_offsets.weight.view(heads, maps, points, 2, -1)[:, level]
    offsets_b = attention.sampling_offsets.bias.view(heads, maps, points, 2)[:, level]
    weights_w = attention.attention_weights.weight.view(heads, maps, points, -1)[:, level]
    weights_b = attention.attention_weights.bias.view(heads, maps, points)[:, level]
    with torch.no_grad():
        single.sampling_offsets.weight.copy_(offsets_w.reshape(-1, attention.embed_dims))
        single.sampling_offsets.bias.copy_(offsets_b.flatten())
        single.attention_weights.weight.copy_(weights_w.reshape(-1, attention.embed_dims))
        single.attention_weights.bias.copy_(weights_b.flatten())
        single.value_projs[0].load_state_dict(attention.value_projs[level].state_dict())
        single.output_proj.load_state_dict(attention.output_proj.state_dict())
    return single


def randomised_attention(
    embed: int, channels: list[int], heads: int = 2, points: int = 3
) -> DeformableAttention:
    attention = DeformableAttention(embed, channels, heads, points)
    with torch.no_grad():  # away from the zero-initialised start, so that every part matters
        for parameter in (attention.sampling_offsets.weight, attention.attention_weights.weight):
            parameter.normal_(0, 0.3)
        attention.attention_weights.bias.normal_(0, 1)
    return attention


def test_an_absent_modality_leaves_attention_to_the_other_alone() -> None:
    torch.manual_seed(1)
    attention = randomised_attention(8, [3, 5])
    camera, lidar = torch.randn(2, 3, 6, 6), torch.randn(2, 5, 6, 6)
    queries, reference = torch.randn(2, 36, 8), cell_centres(6, 6)
    lidar_only = single_map_attention(attention, 1)(queries, reference, [lidar])
    torch.testing.assert_close(attention(queries, reference, [None, lidar]), lidar_only)
    # per sample: camera absent in sample 0 only
    present = torch.tensor([[False, True], [True, True]])
    mixed = attention(queries, reference, [camera, lidar], present)
    torch.testing.assert_close(mixed[0], lidar_only[0])
    torch.testing.assert_close(mixed[1], attention(queries, reference, [camera, lidar])[1])
    assert not torch.allclose(mixed[1], lidar_only[1])
    camera_only = single_map_attention(attention, 0)(queries, reference, [camera])
    torch.testing.assert_close(attention(queries, reference, [camera, None]), camera_only)
    with pytest.raises(ValueError, match="at least one value map"):
        attention(queries, reference, [None, None])


def tiny_mgfm(dropout: float = 0.0) -> ModalityGeneralFusion:
    torch.manual_seed(2)
    fusion = ModalityGeneralFusion(
        [3, 5],
        6,
        (4, 5),
        embed_dims=8,
        num_heads=2,
        num_points=2,
        num_blocks=2,
        ffn_channels=16,
        modality_dropout=dropout,
    )
    with torch.no_grad():
        for block in fusion.blocks:
            for attention in (block.cross_attention, block.self_attention):
                attention.sampling_offsets.weight.normal_(0, 0.3)
                attention.attention_weights.weight.normal_(0, 0.3)
    return fusion


def test_mgfm_fuses_any_resolution_and_trains_every_part() -> None:
    fusion = tiny_mgfm().train()
    camera = torch.randn(2, 3, 8, 10, requires_grad=True)  # a finer camera map than the 4 x 5 query grid
    lidar = torch.randn(2, 5, 4, 5, requires_grad=True)
    out = fusion([camera, lidar])
    assert isinstance(out, FusionOutput)
    assert out.bev.shape == (2, 6, 4, 5) and out.queries.shape == (2, 8, 4, 5)
    (out.bev.square().mean() + out.queries.square().mean()).backward()
    assert camera.grad.abs().sum() > 0 and lidar.grad.abs().sum() > 0  # the queries attend to both
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in fusion.parameters())
    with pytest.raises(ValueError, match="channels"):
        fusion([lidar, camera])
    with pytest.raises(ValueError, match="all inputs are None"):
        fusion([None, None])


def test_mgfm_with_a_modality_absent_equals_attending_to_the_other_only() -> None:
    fusion = tiny_mgfm().eval()
    camera, lidar = torch.randn(2, 3, 4, 5), torch.randn(2, 5, 4, 5)
    with torch.no_grad():
        absent = fusion([None, lidar])
        zero = fusion([torch.zeros_like(camera), lidar])
        # reference: the same queries and blocks, each cross-attention reduced to the LiDAR map's share
        lidar_only = copy.deepcopy(fusion)
        for block in lidar_only.blocks:
            block.cross_attention = single_map_attention(block.cross_attention, 1)
        queries = lidar_only.queries[None].expand(2, -1, -1)
        for block in lidar_only.blocks:
            queries = block(queries, (4, 5), [lidar], lidar_only.position())
        expected = queries.transpose(1, 2).reshape(2, 8, 4, 5)
    torch.testing.assert_close(absent.queries, expected)
    torch.testing.assert_close(absent.bev, lidar_only.output(expected))
    assert torch.isfinite(zero.bev).all() and torch.isfinite(absent.bev).all()
    assert not torch.allclose(zero.queries, absent.queries)  # a zero map is attended to; an absent one is not


def test_modality_dropout_removes_one_modality_per_sample_in_training_only() -> None:
    fusion = tiny_mgfm(dropout=1.0)
    torch.manual_seed(3)
    camera, lidar = torch.randn(8, 3, 4, 5), torch.randn(8, 5, 4, 5)
    with torch.no_grad():
        fusion.eval()
        full = fusion([camera, lidar]).queries
        without_camera = fusion([None, lidar]).queries
        without_lidar = fusion([camera, None]).queries
        fusion.train()
        dropped = fusion([camera, lidar]).queries
        kept = [fusion([None, lidar]).queries, fusion([camera, None]).queries]  # nothing more to drop
    which = []
    for b in range(8):
        if torch.allclose(dropped[b], without_camera[b], atol=1e-6):
            which.append("camera")
        else:
            torch.testing.assert_close(dropped[b], without_lidar[b])
            which.append("lidar")
    assert set(which) == {"camera", "lidar"}  # chosen at random per sample
    torch.testing.assert_close(kept[0], without_camera)
    torch.testing.assert_close(kept[1], without_lidar)
    fusion.modality_dropout = 0.0
    with torch.no_grad():
        torch.testing.assert_close(fusion([camera, lidar]).queries, full)
    with pytest.raises(ValueError, match="probability"):
        ModalityGeneralFusion([3, 5], 6, (4, 5), modality_dropout=1.5)


def test_fuser_built_from_config() -> None:
    conv = build_fuser([3, 5], {"fuser_channels": 6}, (4, 5))
    assert isinstance(conv, ConvFuser)
    settings = {"type": "mgfm", "embed_dims": 8, "num_heads": 2, "num_blocks": 1}
    mgfm = build_fuser([3, 5], {"fuser_channels": 6, "fuser": settings}, (4, 5))
    assert isinstance(mgfm, ModalityGeneralFusion) and mgfm.embed_dims == 8 and len(mgfm.blocks) == 1
    with pytest.raises(ValueError, match=r"type must be one of \('conv', 'mgfm'\), got 'transformer'"):
        build_fuser([3, 5], {"fuser_channels": 6, "fuser": {"type": "transformer"}}, (4, 5))
    with pytest.raises(TypeError, match="config 'fuser' \\(mgfm\\)"):
        build_fuser([3, 5], {"fuser_channels": 6, "fuser": {"type": "mgfm", "layers": 2}}, (4, 5))
    with pytest.raises(ValueError, match="takes no settings"):
        build_fuser([3, 5], {"fuser_channels": 6, "fuser": {"type": "conv", "embed_dims": 8}}, (4, 5))
    # the ConvFuser reads a missing modality as zeros
    camera, lidar = torch.randn(1, 3, 4, 5), torch.randn(1, 5, 4, 5)
    conv.eval()
    torch.testing.assert_close(conv([None, lidar]), conv([torch.zeros_like(camera), lidar]))


def test_fusion_detector_outputs_the_mgfm_queries(synthetic_root: Path) -> None:
    torch.manual_seed(0)
    _, batch = batch_for(synthetic_root, ("lidar", "camera"))
    config = model_config("small_mgfm", ("lidar", "camera"))
    config["fuser"].update(embed_dims=16, num_heads=2, num_blocks=1, ffn_channels=16)
    model = BEVFusion(config).eval()
    shapes = model.output_shapes()
    assert shapes["fusion_queries"] == (16, 64, 64)
    with torch.no_grad():
        outputs = model(batch)
        without_camera = model(batch, absent_modality="camera")
    assert tuple(outputs["fusion_queries"].shape[1:]) == shapes["fusion_queries"]
    assert tuple(outputs["bev"].shape[1:]) == shapes["bev"]
    assert torch.isfinite(without_camera["bev"]).all()
    expected = model.fuser([None, outputs["middle_encoder"]])
    torch.testing.assert_close(without_camera["fusion_queries"], expected.queries)
    assert "fusion_queries" not in BEVFusion(model_config("small", ("lidar", "camera"))).output_shapes()
    assert "fuser" not in model_config("small_mgfm", ("lidar",))
    with pytest.raises(ValueError, match="absent_modality"):
        model(batch, absent_modality="radar")


MGFM_EXP = (
    Path(__file__).resolve().parents[1]
    / "exps/nuscenes/BEVFusion/BEVFusion_nuscenes_centerhead_fusion_mgfm_exp.py"
)
TINY_MGFM = {
    "model_size": "small_mgfm",
    "model_config.fuser.embed_dims": 16,
    "model_config.fuser.num_heads": 2,
    "model_config.fuser.num_blocks": 1,
    "model_config.fuser.ffn_channels": 16,
}


def test_experiment_evaluates_with_a_modality_removed(synthetic_root: Path) -> None:
    exp_class = load_exp_class(MGFM_EXP)
    exp = exp_class(
        data_root=str(synthetic_root), exp_options={**TINY_MGFM, "drop_modality_at_eval": "lidar"}
    )
    assert isinstance(exp.model.fuser, ModalityGeneralFusion)
    exp.model.eval()
    _, batch = batch_for(synthetic_root, ("lidar", "camera"))
    seen = []
    exp.model.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs), with_kwargs=True)
    with torch.no_grad():
        exp.detect(batch)
    assert seen == [{"absent_modality": "lidar"}]
    with pytest.raises(ValueError, match="removes one modality of a fusion experiment"):
        exp_class(data_root=str(synthetic_root), exp_options={**TINY_MGFM, "drop_modality_at_eval": "radar"})
    with pytest.raises(ValueError, match="fuses with an MGFM; model size 'small' has fuser type 'conv'"):
        exp_class(data_root=str(synthetic_root), exp_options={"model_size": "small"})
