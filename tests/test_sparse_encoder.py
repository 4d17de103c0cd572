import pytest
import torch
import torch.nn.functional as F
from spconv.pytorch import ops as spconv_ops

from unikd.models.lidar import MeanVFE, SparseEncoder
from unikd.ops.bev_grid import BEVGrid
from unikd.ops.spconv_compat import apply_cpu_shim, spconv
from unikd.ops.voxelize import voxelize_batch

# The small CPU configuration (BEV 64 x 64 cells of 1.6 m) used by tests and demos.
SMALL = dict(
    point_cloud_range=(-51.2, -51.2, -5.0, 51.2, 51.2, 3.0),
    voxel_size=(0.2, 0.2, 0.4),
    base_channels=16,
    encoder_channels=((16,), (32,), (64,), (64,)),
    downsample_paddings=(1, 1, 1),
    output_channels=64,
)


def random_sites(shape, batch_size, count, seed):
    """`count` distinct random (batch, z, y, x) sites, int32."""
    gen = torch.Generator().manual_seed(seed)
    total = batch_size * shape[0] * shape[1] * shape[2]
    flat = torch.randperm(total, generator=gen)[:count]
    coords = []
    for size in reversed(shape):
        coords.append(flat % size)
        flat = flat // size
    coords.append(flat)
    return torch.stack(coords[::-1], dim=1).int()


def to_dense(features, coords, batch_size, shape):
    """[N, C] at (batch, z, y, x) -> [B, C, D, H, W]."""
    dense = features.new_zeros((batch_size, *shape, features.shape[1]))
    index = coords.long()
    dense[index[:, 0], index[:, 1], index[:, 2], index[:, 3]] = features
    return dense.permute(0, 4, 1, 2, 3)


def dense_weight(conv):
    """spconv weights are [out, kz, ky, kx, in]; conv3d wants [out, in, kz, ky, kx]."""
    return conv.weight.permute(0, 4, 1, 2, 3)


def compare_with_dense(conv, in_channels, shape, batch_size=2, count=40, seed=0):
    """Run a sparse conv and its dense conv3d twin on the same sites; compare outputs and grads."""
    conv = conv.double()
    coords = random_sites(shape, batch_size, count, seed)
    feats = torch.randn(count, in_channels, dtype=torch.float64, requires_grad=True)
    out = conv(spconv.SparseConvTensor(feats, coords, list(shape), batch_size))
    upstream = torch.randn_like(out.features)
    (out.features * upstream).sum().backward()
    sparse_grads = feats.grad.clone(), conv.weight.grad.clone()
    conv.weight.grad = None

    weight = dense_weight(conv).detach().requires_grad_(True)
    dense_in = to_dense(feats.detach(), coords, batch_size, shape).requires_grad_(True)
    dense_out = F.conv3d(dense_in, weight, stride=conv.stride, padding=conv.padding)
    out_shape = tuple(dense_out.shape[2:])
    assert out_shape == tuple(out.spatial_shape)
    dense_upstream = to_dense(upstream, out.indices, batch_size, out_shape)
    (dense_out * dense_upstream).sum().backward()

    out_index = out.indices.long()
    dense_at_sites = dense_out[out_index[:, 0], :, out_index[:, 1], out_index[:, 2], out_index[:, 3]]
    assert torch.allclose(out.features, dense_at_sites, atol=1e-10)
    if not conv.subm:  # a regular sparse conv produces every site its dense twin reaches
        assert torch.allclose(
            to_dense(out.features, out.indices, batch_size, out_shape), dense_out, atol=1e-10
        )
    index = coords.long()
    dense_feat_grad = dense_in.grad[index[:, 0], :, index[:, 1], index[:, 2], index[:, 3]]
    assert torch.allclose(sparse_grads[0], dense_feat_grad, atol=1e-10)
    assert torch.allclose(sparse_grads[1], weight.grad.permute(0, 2, 3, 4, 1), atol=1e-10)
    return out, coords


def test_cpu_shim_is_idempotent():
    if torch.cuda.is_available():
        pytest.skip("the shim applies only without CUDA")
    apply_cpu_shim()
    patched = spconv_ops.get_current_stream, spconv_ops.SpconvOps
    apply_cpu_shim()
    assert (spconv_ops.get_current_stream, spconv_ops.SpconvOps) == patched
    assert spconv_ops.get_current_stream() == 0


def test_cpu_conv_is_repeatable_with_threads():
    """spconv's own CPU scatter-add races between threads; the shim's must not."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        conv = spconv.SubMConv3d(16, 32, 3, padding=1, bias=False).double()
        shape = (8, 32, 32)
        coords = random_sites(shape, 1, 3000, seed=2)
        feats = torch.randn(3000, 16, dtype=torch.float64)
        expected = F.conv3d(to_dense(feats, coords, 1, shape), dense_weight(conv), padding=1)
        index = coords.long()
        expected = expected[index[:, 0], :, index[:, 1], index[:, 2], index[:, 3]]
        for _ in range(5):
            out = conv(spconv.SparseConvTensor(feats, coords, list(shape), 1))
            assert torch.allclose(out.features, expected, atol=1e-10)
    finally:
        torch.set_num_threads(threads)


def test_submanifold_input_conv_matches_dense():
    encoder = SparseEncoder(in_channels=5, **SMALL)
    conv = encoder.conv_input[0]
    assert isinstance(conv, spconv.SubMConv3d)
    out, coords = compare_with_dense(conv, 5, shape=(5, 7, 9))
    assert torch.equal(out.indices, coords)  # submanifold: same sites, same order


@pytest.mark.parametrize("padding", [1, (0, 1, 1)])
def test_strided_downsample_conv_matches_dense(padding):
    encoder = SparseEncoder(**{**SMALL, "downsample_paddings": (padding, 1, 1)})
    conv = next(m for m in encoder.stages[0] if isinstance(m, spconv.SparseConv3d))
    assert tuple(conv.stride) == (2, 2, 2)
    compare_with_dense(conv, 16, shape=(6, 8, 11), seed=1)


def test_reference_config_shapes():
    encoder = SparseEncoder()
    assert encoder.sparse_shape == (41, 1440, 1440)
    assert encoder.bev_stride == 8
    assert encoder.out_channels == 256
    assert encoder.bev_shape == (180, 180)
    assert encoder.bev_cell_size == pytest.approx((0.6, 0.6))
    assert encoder.bev_grid == BEVGrid.from_range(encoder.point_cloud_range, 0.6)

    points = [torch.randn(60, 5) * torch.tensor([20.0, 20.0, 1.0, 1.0, 1.0]) for _ in range(2)]
    voxels, num_points, coords = voxelize_batch(
        points, encoder.voxel_size, encoder.point_cloud_range, 10, 1000
    )
    encoder.eval()
    with torch.no_grad():
        bev = encoder(MeanVFE()(voxels, num_points), coords, batch_size=2)
    assert bev.shape == (2, 256, 180, 180)


def test_student_config_shapes():
    encoder = SparseEncoder(voxel_size=(0.1, 0.1, 0.2))
    assert encoder.sparse_shape == (41, 1080, 1080)
    assert encoder.bev_shape == (135, 135)
    assert encoder.bev_cell_size == pytest.approx((0.8, 0.8))


def positive_weights_(module):
    """Every conv weight 1 / fan-in, BN left at its initial (identity) statistics, eval mode."""
    for m in module.modules():
        if isinstance(m, (spconv.SubMConv3d, spconv.SparseConv3d)):
            torch.nn.init.constant_(m.weight, 1.0 / m.weight[0].numel())
    module.eval()


@pytest.mark.parametrize("config", [SMALL, {}], ids=["small", "nuscenes"])
def test_point_lights_its_bev_cell(config):
    encoder = SparseEncoder(**config)
    positive_weights_(encoder)
    grid = encoder.bev_grid
    # Asymmetric (a row/column swap would miss) and with x, y > 0 so that the features stay positive.
    row, col = 7 * grid.height // 8, 5 * grid.width // 8
    # A point in the first voxel of BEV cell (row, col), so that no stride-2 conv can split it.
    voxel_x, voxel_y = encoder.voxel_size[:2]
    x = grid.x_min + col * grid.cell_x + 0.5 * voxel_x
    y = grid.y_min + row * grid.cell_y + 0.5 * voxel_y
    points = [torch.tensor([[x, y, 0.5, 0.5, 0.0]]), torch.zeros(0, 5)]
    voxels, num_points, coords = voxelize_batch(
        points, encoder.voxel_size, encoder.point_cloud_range, 10, 100
    )
    with torch.no_grad():
        bev = encoder(MeanVFE()(voxels, num_points), coords, batch_size=2)
    occupied = bev.abs().sum(dim=1) > 0
    assert occupied[1].sum() == 0
    assert torch.nonzero(occupied[0]).tolist() == [[row, col]]
    expected_col, expected_row = grid.metric_to_cell(torch.tensor([x, y])).floor().long().tolist()
    assert (expected_row, expected_col) == (row, col)


def test_small_config_trains_end_to_end():
    torch.manual_seed(0)
    encoder = SparseEncoder(**SMALL)
    assert encoder.bev_shape == (64, 64) and encoder.out_channels == 64
    points = [torch.randn(1500, 5) * torch.tensor([15.0, 15.0, 1.0, 1.0, 1.0]) for _ in range(2)]
    voxels, num_points, coords = voxelize_batch(
        points, encoder.voxel_size, encoder.point_cloud_range, 10, 20000
    )
    bev = encoder(MeanVFE()(voxels, num_points), coords, batch_size=2)
    assert bev.shape == (2, 64, 64, 64)
    bev.square().mean().backward()
    for name, param in encoder.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for p in encoder.parameters())


def test_mean_vfe():
    voxels = torch.zeros(2, 3, 6)
    voxels[0, :2] = torch.tensor([[1.0, 2, 3, 4, 5, 9], [3.0, 4, 5, 6, 7, 9]])
    voxels[1, 0] = torch.tensor([1.0, 1, 1, 1, 1, 9])
    vfe = MeanVFE(num_features=5)
    out = vfe(voxels, torch.tensor([2, 1]))
    assert vfe.out_channels == 5
    assert torch.equal(out, torch.tensor([[2.0, 3, 4, 5, 6], [1.0, 1, 1, 1, 1]]))


def test_invalid_configs_and_inputs():
    with pytest.raises(ValueError, match="keeps its channels"):
        SparseEncoder(encoder_channels=((16, 32, 32), (32, 64), (64, 128), (128,)))
    with pytest.raises(ValueError, match="downsample padding"):
        SparseEncoder(downsample_paddings=(1, 1))
    with pytest.raises(ValueError, match="divide into BEV cells"):
        SparseEncoder(voxel_size=(0.6, 0.6, 0.2))
    encoder = SparseEncoder(**SMALL)
    with pytest.raises(ValueError, match="inside the sparse shape"):
        encoder(torch.zeros(1, 5), torch.tensor([[0, 0, 600, 0]], dtype=torch.int32), batch_size=1)
