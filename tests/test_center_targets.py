"""The batched detection targets against the box-by-box loop they replace, and their host-sync freedom."""

import math

import pytest
import torch

from unikd.data.classes import CLASSES, HEAD_CLASS_GROUPS
from unikd.models.heads.center_targets import build_targets
from unikd.ops.bev_grid import BEVGrid
from unikd.ops.checks import SYNC_CHECKS_ENV, value_checks
from unikd.ops.gaussian import gaussian_radius

# Non-square map with different cell sizes: 70 columns of 0.5 m along x, 50 rows of 0.7 m along y.
GRID = BEVGrid(x_min=-20.0, y_min=-15.0, x_max=15.0, y_max=20.0, height=50, width=70)
TASK_IDS = tuple(tuple(CLASSES.index(name) for name in task) for task in HEAD_CLASS_GROUPS)


def reference_kernel(radius: int) -> torch.Tensor:
    """CenterPoint's Gaussian patch [2r+1, 2r+1] (sigma (2r+1)/6, values under float32 eps cut to 0)."""
    sigma = (2 * radius + 1) / 6
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    yy, xx = torch.meshgrid(offsets, offsets, indexing="ij")
    kernel = torch.exp(-(xx * xx + yy * yy) / (2 * sigma * sigma))
    kernel[kernel < torch.finfo(torch.float32).eps * kernel.max()] = 0
    return kernel


def reference_targets(boxes_list, labels_list, grid, task_ids, min_overlap, min_radius, max_objs):
    """The box-by-box loop: per sample, per task, each box inside the grid in order takes the next slot
    and max-draws its clipped Gaussian patch into its class's map."""
    batch = len(boxes_list)
    out = []
    for ids in task_ids:
        heatmap = torch.zeros(batch, len(ids), grid.height, grid.width)
        codes = torch.zeros(batch, max_objs, 10)
        indices = torch.zeros(batch, max_objs, dtype=torch.long)
        mask = torch.zeros(batch, max_objs, dtype=torch.bool)
        classes = torch.zeros(batch, max_objs, dtype=torch.long)
        for b, (boxes, labels) in enumerate(zip(boxes_list, labels_list, strict=True)):
            slot = 0
            for box, label in zip(boxes.tolist(), labels.tolist(), strict=True):
                if label not in ids:
                    continue
                fx, fy = (box[0] - grid.x_min) / grid.cell_x, (box[1] - grid.y_min) / grid.cell_y
                col, row = math.floor(fx), math.floor(fy)
                if not (0 <= col < grid.width and 0 <= row < grid.height):
                    continue
                local = ids.index(label)
                radius = max(min_radius, int(gaussian_radius(box[3] / grid.cell_x, box[4] / grid.cell_y, min_overlap)))
                kernel = reference_kernel(radius)
                for dy in range(-radius, radius + 1):
                    for dx in range(-radius, radius + 1):
                        r, c = row + dy, col + dx
                        if 0 <= r < grid.height and 0 <= c < grid.width:
                            value = kernel[dy + radius, dx + radius]
                            heatmap[b, local, r, c] = max(heatmap[b, local, r, c], value)
                codes[b, slot] = torch.tensor(
                    [fx - col, fy - row, box[2], *(math.log(v) for v in box[3:6]),
                     math.sin(box[6]), math.cos(box[6]), box[7], box[8]]
                )
                indices[b, slot], mask[b, slot], classes[b, slot] = row * grid.width + col, True, local
                slot += 1
        out.append((heatmap, codes, indices, mask, classes))
    return out


def make_box(x: float, y: float, length: float, width: float, yaw: float = 0.4) -> list[float]:
    return [x, y, -1.1, length, width, 1.7, yaw, 0.8, -0.3]


def scene(seed: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` boxes of every class at random sizes (0.3 to 14 m: radii from the minimum to about 9 cells),
    some of them outside the map, plus hand-placed overlapping and border boxes."""
    gen = torch.Generator().manual_seed(seed)
    boxes = torch.zeros(count, 9)
    boxes[:, 0] = torch.rand(count, generator=gen) * 45 - 25  # x in [-25, 20): some outside [-20, 15)
    boxes[:, 1] = torch.rand(count, generator=gen) * 45 - 20  # y in [-20, 25): some outside [-15, 20)
    boxes[:, 2] = torch.randn(count, generator=gen)
    boxes[:, 3:5] = torch.rand(count, 2, generator=gen) ** 2 * 13.7 + 0.3
    boxes[:, 5] = torch.rand(count, generator=gen) * 2 + 0.5
    boxes[:, 6:9] = torch.randn(count, 3, generator=gen)
    labels = torch.randint(0, len(CLASSES), (count,), generator=gen)
    fixed = torch.tensor(
        [
            make_box(1.3, 2.2, 6.0, 2.0),  # two cars whose Gaussians overlap (max, not sum)
            make_box(2.4, 2.9, 4.5, 1.8),
            make_box(1.9, 2.5, 0.6, 0.6),  # a pedestrian on top of them: its own map
            make_box(-19.9, -14.9, 9.0, 3.0),  # corner cells: windows clipped on two sides
            make_box(14.9, 19.9, 12.0, 3.0),
            make_box(14.99, -3.3, 2.0, 0.8),  # the last column
            make_box(15.0, 0.0, 4.0, 2.0),  # just outside: ignored
        ]
    )
    fixed_labels = torch.tensor([CLASSES.index(name) for name in
                                 ("car", "car", "pedestrian", "truck", "bus", "barrier", "car")])
    return torch.cat([boxes, fixed]), torch.cat([labels, fixed_labels])


def assert_same(targets, reference) -> None:
    for target, (heatmap, codes, indices, mask, classes) in zip(targets, reference, strict=True):
        assert torch.equal(target.heatmap, heatmap)
        assert torch.equal(target.mask, mask)
        assert torch.equal(target.indices, indices)
        assert torch.equal(target.classes, classes)
        torch.testing.assert_close(target.codes, codes, rtol=1e-5, atol=1e-5)  # float64 reference


@pytest.mark.parametrize(("min_overlap", "min_radius"), [(0.1, 2), (0.7, 0), (0.3, 4)])
def test_targets_equal_the_box_loop(min_overlap: float, min_radius: int) -> None:
    samples = [scene(0, 40), scene(1, 3), (torch.zeros(0, 9), torch.zeros(0, dtype=torch.long)), scene(2, 25)]
    boxes, labels = [s[0] for s in samples], [s[1] for s in samples]
    targets = build_targets(boxes, labels, GRID, TASK_IDS, min_overlap, min_radius, max_objs=40)
    reference = reference_targets(boxes, labels, GRID, TASK_IDS, min_overlap, min_radius, 40)
    assert_same(targets, reference)
    # The cases the comparison must have met: overlapping Gaussians of one map (a cell of one car's window
    # holds the other car's larger value), clipped windows, ignored boxes, several radii.
    car = targets[0].heatmap[0, 0]
    assert car[int((2.2 + 15) / 0.7), int((1.3 + 20) / 0.5)] == 1 and car[int((2.9 + 15) / 0.7), int((2.4 + 20) / 0.5)] == 1
    assert targets[1].heatmap[0, 0, 0, 0] == 1 and targets[2].heatmap[0, 0, 49, 69] == 1
    inside = sum(int(t.mask[0].sum()) for t in targets)
    assert inside < len(samples[0][0])
    radii = {max(min_radius, int(gaussian_radius(b[3] / GRID.cell_x, b[4] / GRID.cell_y, min_overlap)))
             for b in samples[0][0].tolist()}
    assert len(radii) >= 4


def test_one_task_in_another_class_order_and_classes_left_out() -> None:
    boxes, labels = scene(3, 30)
    # TransFusion's layout: all classes in one task, in its own order; and a head of two tasks without the rest.
    for task_ids in ((tuple(reversed(range(len(CLASSES)))),), ((4, 1), (8,))):
        targets = build_targets([boxes, boxes[:9]], [labels, labels[:9]], GRID, task_ids, 0.1, 2, max_objs=40)
        assert_same(targets, reference_targets([boxes, boxes[:9]], [labels, labels[:9]], GRID, task_ids, 0.1, 2, 40))


def test_max_objs() -> None:
    boxes = torch.tensor([make_box(-10 + 2 * i, 1.0, 4.0, 2.0) for i in range(5)])
    cars_and_cones = torch.tensor([0, 0, 8, 8, 8])  # car: task 0, traffic_cone: task 5
    # More boxes than max_objs in the sample, but no task over it: same targets as the loop.
    targets = build_targets([boxes], [cars_and_cones], GRID, TASK_IDS, 0.1, 2, max_objs=3)
    assert_same(targets, reference_targets([boxes], [cars_and_cones], GRID, TASK_IDS, 0.1, 2, 3))
    with pytest.raises(ValueError, match=r"task 5 has 3 objects in sample 1, more than max_objs=2"):
        build_targets([boxes[:2], boxes], [cars_and_cones[:2], cars_and_cones], GRID, TASK_IDS, 0.1, 2, max_objs=2)


def test_no_value_is_read_back() -> None:
    """On tensors without values (the meta device) the targets build: nothing reads a value back to the
    host (`.tolist()`, `.item()`, `nonzero`), which on an accelerator would be a host sync."""
    boxes, labels = scene(4, 20)
    targets = build_targets([boxes.to("meta"), boxes[:5].to("meta")], [labels.to("meta"), labels[:5].to("meta")],
                            GRID, TASK_IDS, 0.1, 2, max_objs=30)
    assert targets[0].heatmap.shape == (2, 1, 50, 70) and targets[0].heatmap.device.type == "meta"
    assert targets[5].codes.shape == (2, 30, 10) and targets[5].mask.dtype == torch.bool


def test_value_checks_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, meta = torch.zeros(1), torch.zeros(1, device="meta")
    monkeypatch.delenv(SYNC_CHECKS_ENV, raising=False)
    assert value_checks(cpu) and not value_checks(meta)
    monkeypatch.setenv(SYNC_CHECKS_ENV, "1")
    assert value_checks(meta)
    with pytest.raises(RuntimeError, match="meta"):  # the checks now read the boxes' values
        build_targets([torch.zeros(1, 9, device="meta")], [torch.zeros(1, dtype=torch.long, device="meta")],
                      GRID, TASK_IDS, 0.1, 2, 10)
    monkeypatch.setenv(SYNC_CHECKS_ENV, "yes")
    with pytest.raises(ValueError, match="UNIKD_SYNC_CHECKS must be 0 or 1, got 'yes'"):
        value_checks(cpu)
