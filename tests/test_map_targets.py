"""Map-segmentation targets `gt_masks_bev`: cells of the key LiDAR frame after the BEV augmentation,
rows along y and columns along x, against a hand-made map, the devkit's get_map_mask and the LiDAR."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import shapely
import torch
from map_ground import ground_returns
from nuscenes.map_expansion.map_api import NuScenesMap
from shapely.geometry import Polygon

from unikd.data import nuscenes_dataset
from unikd.data.collate import collate_batch
from unikd.data.map_targets import MAP_CLASSES, MAP_GRID, MapTargets, Shapes, fill_polygons
from unikd.data.nuscenes_dataset import NuScenesDetectionDataset, load_points
from unikd.data.transforms import BEVAugConfig, bda_matrix

RANGE = (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0)
LOCATION = "boston-seaport"
# A LiDAR pose: turned 40 degrees from the global x axis, 1.8 m above the ground.
YAW = np.deg2rad(40.0)
LIDAR2GLOBAL = np.array(
    [
        [np.cos(YAW), -np.sin(YAW), 0.0, 1200.0],
        [np.sin(YAW), np.cos(YAW), 0.0, 800.0],
        [0.0, 0.0, 1.0, 1.8],
        [0.0, 0.0, 0.0, 1.0],
    ]
)
# In the LiDAR frame: a drivable rectangle front-left (x in [10, 20], y in [30, 35]) and a lane divider
# along y = -20 from x = -30 to -10 (behind, to the right).
RECTANGLE = np.array([[10.0, 30.0], [20.0, 30.0], [20.0, 35.0], [10.0, 35.0]])
DIVIDER = np.array([[-30.0, -20.0], [-10.0, -20.0]])


def to_global(xy: np.ndarray) -> np.ndarray:
    return xy @ LIDAR2GLOBAL[:2, :2].T + LIDAR2GLOBAL[:2, 3]


def write_map(root: Path) -> None:
    """A map-expansion file (loadable by the devkit) holding the rectangle and the divider."""
    corners, ends = to_global(RECTANGLE), to_global(DIVIDER)
    nodes = [{"token": f"n{k}", "x": float(x), "y": float(y)} for k, (x, y) in enumerate([*corners, *ends])]
    layers = {name: [] for name in ("road_segment", "road_block", "lane", "ped_crossing", "walkway", "stop_line")}
    layers |= {name: [] for name in ("carpark_area", "road_divider", "traffic_light", "lane_connector")}
    layers |= {
        "version": "1.3",
        "canvas_edge": [3000.0, 2000.0],
        "node": nodes,
        "polygon": [{"token": "p0", "exterior_node_tokens": ["n0", "n1", "n2", "n3"], "holes": []}],
        "line": [{"token": "l0", "node_tokens": ["n4", "n5"]}],
        "drivable_area": [{"token": "d0", "polygon_tokens": ["p0"]}],
        "lane_divider": [{"token": "ld0", "line_token": "l0", "lane_divider_segments": []}],
        "arcline_path_3": {},
        "connectivity": {},
    }
    (root / "maps" / "expansion").mkdir(parents=True)
    (root / "maps" / "expansion" / f"{LOCATION}.json").write_text(json.dumps(layers))


def expected_masks(bda: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drivable and divider cells by their centres: augmented frame -> LiDAR frame -> inside the shapes?"""
    xs = MAP_GRID.x_min + (np.arange(MAP_GRID.width) + 0.5) * MAP_GRID.cell_x
    ys = MAP_GRID.y_min + (np.arange(MAP_GRID.height) + 0.5) * MAP_GRID.cell_y
    y, x = np.meshgrid(ys, xs, indexing="ij")
    centres = np.stack([x, y, np.zeros_like(x), np.ones_like(x)], axis=-1) @ np.linalg.inv(bda).T
    lx, ly = centres[..., 0], centres[..., 1]
    drivable = (lx >= 10) & (lx <= 20) & (ly >= 30) & (ly <= 35)
    divider = (lx >= -30) & (lx <= -10) & (np.abs(ly + 20) <= 0.5)
    return drivable, divider


def test_fill_is_the_cells_whose_centre_is_inside(tmp_path: Path) -> None:
    """Random star polygons with square holes, some reaching past the grid: shapely's containment of the centres."""
    rng = np.random.default_rng(0)
    height, width = 37, 53
    cols, rows = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    for _ in range(40):
        polygons, expected = [], np.zeros((height, width), dtype=bool)
        for _ in range(int(rng.integers(1, 4))):
            angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(3, 12))))
            centre = rng.uniform(-10, 60, 2)
            ring = centre + np.stack([np.cos(angles), np.sin(angles)], 1) * rng.uniform(3, 35, (len(angles), 1))
            hole = centre + np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * rng.uniform(0.5, 2.5)
            shape = Polygon(ring, [hole])
            if shape.is_valid:
                polygons.append([ring, hole])
                expected |= shapely.contains_xy(shape, cols, rows)
        if polygons:
            shapes = Shapes.from_rings(polygons)
            filled = fill_polygons(shapes.start, shapes.end, shapes.polygon, height, width)
            np.testing.assert_array_equal(filled, expected)


def test_a_rectangle_front_left_lands_at_the_rows_of_its_y_and_columns_of_its_x(tmp_path: Path) -> None:
    write_map(tmp_path)
    NuScenesMap(str(tmp_path), LOCATION)  # the file is a map the devkit reads
    masks = MapTargets(tmp_path, [LOCATION])(LOCATION, LIDAR2GLOBAL, np.eye(4))
    assert masks.shape == (len(MAP_CLASSES), 200, 200) and masks.dtype == bool
    drivable, divider = masks[MAP_CLASSES.index("drivable_area")], masks[MAP_CLASSES.index("divider")]
    rows, cols = np.nonzero(drivable)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (160, 169, 120, 139)  # y 30..35, x 10..20
    assert drivable.sum() == 10 * 20
    rows, cols = np.nonzero(divider)
    assert set(rows) == {59, 60} and (cols.min(), cols.max()) == (40, 79)  # y -20 +- 0.5, x -30..-10
    others = [c for c, name in enumerate(MAP_CLASSES) if name not in ("drivable_area", "divider")]
    assert not masks[others].any()


@pytest.mark.parametrize(
    "bda",
    [
        bda_matrix(np.pi / 2, 1.0, np.zeros(3), False, False),
        bda_matrix(0.3, 1.07, np.array([1.3, -0.7, 0.2]), True, False),
        bda_matrix(-0.6, 0.93, np.array([-0.4, 0.9, 0.0]), False, True),
        bda_matrix(2.0, 1.0, np.zeros(3), True, True),
    ],
)
def test_the_masks_move_with_the_points_under_the_augmentation(tmp_path: Path, bda: np.ndarray) -> None:
    write_map(tmp_path)
    masks = MapTargets(tmp_path, [LOCATION])(LOCATION, LIDAR2GLOBAL, bda)
    drivable, divider = expected_masks(bda)
    assert drivable.sum() > 150 and divider.sum() > 50
    np.testing.assert_array_equal(masks[MAP_CLASSES.index("drivable_area")], drivable)
    np.testing.assert_array_equal(masks[MAP_CLASSES.index("divider")], divider)


def test_the_masks_are_bevfusions_devkit_patch(synthetic_root: Path) -> None:
    """BEVFusion's recipe (get_map_mask on the patch at the LiDAR, turned by its yaw; its x-major
    transpose left out) gives the same cells, up to the devkit's rounding of vertices to whole cells."""
    dataset = NuScenesDetectionDataset(synthetic_root, "v1.0-mini", "mini_val", RANGE, num_sweeps=1)
    layers = ["drivable_area", "ped_crossing", "walkway", "stop_line", "carpark_area", "road_divider", "lane_divider"]
    targets = MapTargets(synthetic_root, {info["location"] for info in dataset.infos})
    ious = {name: [] for name in MAP_CLASSES}
    for info in dataset.infos[::3]:
        lidar2global = info["lidar2global"]
        ours = targets(info["location"], lidar2global, np.eye(4))
        devkit = NuScenesMap(str(synthetic_root), info["location"]).get_map_mask(
            (lidar2global[0, 3], lidar2global[1, 3], 100.0, 100.0),
            np.rad2deg(np.arctan2(lidar2global[1, 0], lidar2global[0, 0])),
            layers,
            canvas_size=(200, 200),
        ).astype(bool)
        theirs = [*devkit[:5], devkit[5] | devkit[6]]
        for name, mine, other in zip(MAP_CLASSES, ours, theirs, strict=True):
            if (mine | other).any():
                ious[name].append((mine & other).sum() / (mine | other).sum())
    assert all(len(values) == 6 for values in ious.values())
    means = {name: float(np.mean(values)) for name, values in ious.items()}
    assert means["drivable_area"] > 0.96 and means["walkway"] > 0.9 and means["carpark_area"] > 0.8, means
    assert means["ped_crossing"] > 0.8 and means["divider"] > 0.5 and means["stop_line"] > 0.3, means


def test_dataset_masks_hold_the_lidar_ground_under_augmentation(synthetic_root: Path) -> None:
    """Training items (rotated, scaled, mirrored): asphalt returns, moved by the item's bda, fall on
    drivable cells, sidewalk returns on walkway cells; the batch stacks the masks."""
    aug = BEVAugConfig(flip_x_prob=0.5, flip_y_prob=0.5)
    dataset = NuScenesDetectionDataset(
        synthetic_root, "v1.0-mini", "mini_train", RANGE, num_sweeps=1, training=True, bev_aug=aug, map_segmentation=True
    )
    on = {"asphalt": [0, 0], "paving": [0, 0]}
    flips = set()
    for index in (3, 17, 30, 44, 58):
        item = dataset[index]
        bda = item["bda"].double().numpy()
        flips.add(bool(np.linalg.det(bda[:2, :2]) < 0))
        masks = item["gt_masks_bev"].numpy()
        assert masks.shape == (6, 200, 200) and masks.dtype == bool
        info = dataset.infos[index]
        xyz, material = ground_returns(load_points(synthetic_root / info["lidar_path"]), info["lidar2global"])
        xy = xyz @ bda[:2, :3].T + bda[:2, 3]
        col, row = np.floor((xy - [MAP_GRID.x_min, MAP_GRID.y_min]) / MAP_GRID.cell_x).astype(int).T
        for name, layer in (("asphalt", "drivable_area"), ("paving", "walkway")):
            mine = material == name
            on[name][0] += masks[MAP_CLASSES.index(layer), row[mine], col[mine]].sum()
            on[name][1] += mine.sum()
    assert flips == {False, True}
    assert on["asphalt"][0] > 0.99 * on["asphalt"][1] and on["asphalt"][1] > 5000
    assert on["paving"][0] > 0.95 * on["paving"][1] and on["paving"][1] > 500
    batch = collate_batch([dataset[0], dataset[1]])
    assert batch["gt_masks_bev"].shape == (2, 6, 200, 200) and batch["gt_masks_bev"].dtype == torch.bool
    assert "gt_masks_bev" not in NuScenesDetectionDataset(synthetic_root, "v1.0-mini", "mini_val", RANGE, num_sweeps=1)[0]


def test_missing_maps_and_locations_are_clear_errors(
    synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(FileNotFoundError, match=re.escape(f"missing: {tmp_path}/maps/expansion/{LOCATION}.json")):
        MapTargets(tmp_path, [LOCATION])
    infos = nuscenes_dataset.load_or_build_infos(synthetic_root, "v1.0-mini", "mini_val", max_sweeps=1)
    monkeypatch.setattr(nuscenes_dataset, "load_or_build_infos", lambda *args, **kwargs: [{**i, "location": ""} for i in infos])
    with pytest.raises(ValueError, match="map location of every sample; 16 of the 16"):
        NuScenesDetectionDataset(synthetic_root, "v1.0-mini", "mini_val", RANGE, num_sweeps=1, map_segmentation=True)
