import pytest
import torch

from unikd.ops.voxelize import grid_size, voxelize, voxelize_batch

VOXEL_SIZE = (0.5, 0.25, 0.5)
PC_RANGE = (-2.0, -1.0, -1.0, 2.0, 1.5, 1.0)  # grid 8 (x) x 10 (y) x 4 (z)


def naive_voxelize(points, voxel_size, pc_range, max_points, max_voxels):
    """One point at a time: the definition written out plainly."""
    nx, ny, nz = grid_size(voxel_size, pc_range)
    pc_min = torch.tensor(pc_range[:3], dtype=points.dtype)
    size = torch.tensor(voxel_size, dtype=points.dtype)
    slots: dict[tuple[int, int, int], list[torch.Tensor]] = {}
    counts: dict[tuple[int, int, int], int] = {}
    order: list[tuple[int, int, int]] = []
    for point in points:
        ix, iy, iz = (int(v) for v in torch.floor((point[:3] - pc_min) / size))
        if not (0 <= ix < nx and 0 <= iy < ny and 0 <= iz < nz):
            continue
        cell = (iz, iy, ix)
        if cell not in counts:
            if len(order) == max_voxels:
                continue
            order.append(cell)
            counts[cell] = 0
            slots[cell] = []
        counts[cell] += 1
        if len(slots[cell]) < max_points:
            slots[cell].append(point)
    voxels = torch.zeros(len(order), max_points, points.shape[1], dtype=points.dtype)
    for v, cell in enumerate(order):
        for k, point in enumerate(slots[cell]):
            voxels[v, k] = point
    num_points = torch.tensor([min(counts[c], max_points) for c in order], dtype=torch.int64)
    coords = torch.tensor(order, dtype=torch.int32).reshape(-1, 3)
    return voxels, num_points, coords


def random_cloud(seed: int, n: int = 400) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    low = torch.tensor([-2.5, -1.5, -1.5])
    high = torch.tensor([2.5, 2.0, 1.5])
    xyz = low + (high - low) * torch.rand(n, 3, generator=gen)
    # Snap some points onto voxel faces and the range boundary, and repeat some so voxels overflow.
    snapped = torch.round(xyz[: n // 4] / 0.5) * 0.5
    repeats = xyz[: n // 8].repeat(3, 1)
    boundary = torch.tensor(
        [
            [-2.0, -1.0, -1.0],  # the minimum corner: kept
            [2.0, 0.0, 0.0],  # x == x_max: dropped
            [0.0, 1.5, 0.0],  # y == y_max: dropped
            [0.0, 0.0, 1.0],  # z == z_max: dropped
            [1.999, 1.499, 0.999],  # just inside the maximum corner: kept
            [0.5, 0.25, 0.5],  # on internal voxel faces
        ]
    )
    xyz = torch.cat([xyz, snapped, repeats, boundary])
    xyz = xyz[torch.randperm(xyz.shape[0], generator=gen)]
    extra = torch.rand(xyz.shape[0], 2, generator=gen)
    return torch.cat([xyz, extra], dim=1)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("max_points, max_voxels", [(3, 1000), (1, 1000), (4, 37), (2, 1)])
def test_matches_naive_reference(seed, max_points, max_voxels):
    points = random_cloud(seed)
    got = voxelize(points, VOXEL_SIZE, PC_RANGE, max_points, max_voxels)
    expected = naive_voxelize(points, VOXEL_SIZE, PC_RANGE, max_points, max_voxels)
    for g, e in zip(got, expected, strict=True):
        assert g.dtype == e.dtype
        assert torch.equal(g, e)
    if max_voxels < 1000:
        assert got[0].shape[0] == max_voxels


def test_boundary_and_layout():
    points = torch.tensor(
        [
            [-2.0, -1.0, -1.0, 7.0],  # voxel (z, y, x) = (0, 0, 0)
            [2.0, 0.0, 0.0, 1.0],  # x == x_max: outside
            [1.9, 1.4, 0.9, 2.0],  # (3, 9, 7): asymmetric grid, coords must be (z, y, x)
            [-1.9, 1.4, -0.9, 3.0],  # (0, 9, 0)
        ]
    )
    voxels, num_points, coords = voxelize(points, VOXEL_SIZE, PC_RANGE, 2, 10)
    assert coords.tolist() == [[0, 0, 0], [3, 9, 7], [0, 9, 0]]
    assert num_points.tolist() == [1, 1, 1]
    assert voxels[:, 0, 3].tolist() == [7.0, 2.0, 3.0]
    assert torch.all(voxels[:, 1] == 0)


def test_empty_and_all_outside():
    for points in (torch.zeros(0, 4), torch.full((5, 4), 100.0)):
        voxels, num_points, coords = voxelize(points, VOXEL_SIZE, PC_RANGE, 3, 10)
        assert voxels.shape == (0, 3, 4)
        assert num_points.shape == (0,)
        assert coords.shape == (0, 3) and coords.dtype == torch.int32


def test_batch_concatenates_with_batch_index():
    clouds = [random_cloud(2, 100), random_cloud(3, 150)]
    voxels, num_points, coords = voxelize_batch(clouds, VOXEL_SIZE, PC_RANGE, 3, 20)
    start = 0
    for index, cloud in enumerate(clouds):
        v, n, c = voxelize(cloud, VOXEL_SIZE, PC_RANGE, 3, 20)
        end = start + v.shape[0]
        assert v.shape[0] == 20  # max_voxels applies per sample
        assert torch.equal(voxels[start:end], v)
        assert torch.equal(num_points[start:end], n)
        assert torch.all(coords[start:end, 0] == index)
        assert torch.equal(coords[start:end, 1:], c)
        start = end
    assert start == voxels.shape[0]
    assert coords.dtype == torch.int32


def test_nuscenes_scale_runs():
    gen = torch.Generator().manual_seed(0)
    points = torch.rand(300_000, 5, generator=gen) * torch.tensor([120.0, 120.0, 10.0, 1.0, 1.0])
    points[:, :3] -= torch.tensor([60.0, 60.0, 6.0])
    voxels, num_points, coords = voxelize(points, (0.075, 0.075, 0.2), (-54, -54, -5, 54, 54, 3), 10, 120_000)
    assert voxels.shape == (120_000, 10, 5)
    assert int(coords[:, 1].max()) < 1440 and int(coords[:, 2].max()) < 1440 and int(coords[:, 0].max()) < 40
    assert torch.all(num_points >= 1)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="points must be"):
        voxelize(torch.zeros(4, 2), VOXEL_SIZE, PC_RANGE, 3, 10)
    with pytest.raises(ValueError, match="max_points_per_voxel"):
        voxelize(torch.zeros(4, 3), VOXEL_SIZE, PC_RANGE, 0, 10)
    with pytest.raises(ValueError, match="positive extent"):
        voxelize(torch.zeros(4, 3), VOXEL_SIZE, (0, 0, 0, -1, 1, 1), 3, 10)
