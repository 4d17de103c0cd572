"""The synthetic set's semantic map (nuScenes map expansion), read with the devkit's NuScenesMap and
checked against what the LiDAR sees: each ground return lies on the map layers of its material."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from map_ground import ground_returns
from nuscenes.map_expansion.map_api import NuScenesMap
from nuscenes.nuscenes import NuScenes
from nuscenes.utils.geometry_utils import points_in_box
from shapely.geometry import MultiPoint, Polygon
from shapely.ops import unary_union

from unikd.data.infos import sensor_to_global
from unikd.data.synthetic import generate_synthetic_nuscenes
from unikd.data.synthetic.generate import place_scenes, sample_world
from unikd.data.synthetic.road_map import MappedRoad, map_expansion
from unikd.data.synthetic.scene import MAP_MARGIN

VERSION = "v1.0-mini"
POLYGON_LAYERS = ["drivable_area", "ped_crossing", "walkway", "stop_line", "carpark_area"]
PATCH = 100.0  # metres around the LiDAR, at 10 cells per metre
# Two scenes of boston-seaport whose roads would overlap where they were drawn: the second is moved.
SHIFTED = {"seed": 22, "train_scenes": 2, "val_scenes": 0, "keyframes_per_scene": 2, "sweeps_per_keyframe": 1}


@pytest.fixture(scope="module")
def nusc(synthetic_root: Path) -> NuScenes:
    return NuScenes(VERSION, str(synthetic_root), verbose=False)


def location_of(nusc: NuScenes, sample: dict) -> str:
    return nusc.get("log", nusc.get("scene", sample["scene_token"])["log_token"])["location"]


def layer_fractions(
    nusc: NuScenes, maps: dict[str, NuScenesMap], samples: list[dict]
) -> tuple[dict[str, dict[str, float]], dict[str, int]]:
    """Per material: the fraction of its ground returns on each polygon layer (the devkit's get_map_mask)
    and their number; under "markings", per layer the fraction of the returns on it that hit a marking."""
    on, count, marked, inside = {}, {}, {}, {}
    for sample in samples:
        token = sample["data"]["LIDAR_TOP"]
        lidar2global = sensor_to_global(nusc, token)
        points = np.fromfile(nusc.get_sample_data_path(token), dtype=np.float32).reshape(-1, 5)
        xyz, material = ground_returns(points, lidar2global)
        xy = xyz @ lidar2global[:2, :3].T + lidar2global[:2, 3]
        centre = lidar2global[:2, 3]
        masks = maps[location_of(nusc, sample)].get_map_mask(
            (centre[0], centre[1], PATCH, PATCH), 0.0, POLYGON_LAYERS, canvas_size=(1000, 1000)
        )
        col, row = np.floor((xy - centre + PATCH / 2) * 10).astype(int).T
        values = masks[:, row, col].astype(bool)  # ground returns lie within 40 m: inside the patch
        for name in set(material) - {""}:
            mine = material == name
            count[name] = count.get(name, 0) + mine.sum()
            on[name] = on.get(name, 0) + values[:, mine].sum(axis=1)
        for k, layer in enumerate(POLYGON_LAYERS):
            inside[layer] = inside.get(layer, 0) + values[k].sum()
            marked[layer] = marked.get(layer, 0) + (values[k] & (material == "marking")).sum()
    fractions = {name: dict(zip(POLYGON_LAYERS, on[name] / count[name], strict=True)) for name in count}
    fractions["markings"] = {layer: marked[layer] / max(inside[layer], 1) for layer in POLYGON_LAYERS}
    return fractions, count


def test_each_location_of_the_logs_has_a_map_the_devkit_loads(nusc: NuScenes, synthetic_root: Path) -> None:
    locations = {log["location"] for log in nusc.log}
    written = {path.stem for path in (synthetic_root / "maps" / "expansion").glob("*.json")}
    assert written == locations and len(locations) > 1
    for location in locations:
        nusc_map = NuScenesMap(str(synthetic_root), location)
        for layer in (*POLYGON_LAYERS, "road_segment", "road_divider", "lane_divider"):
            assert len(getattr(nusc_map, layer)) > 0, (location, layer)
        crossing = nusc_map.stop_line[0]["ped_crossing_tokens"][0]
        assert nusc_map.get("ped_crossing", crossing)["token"] == crossing


def test_ground_returns_lie_on_the_layers_of_their_material(nusc: NuScenes, synthetic_root: Path) -> None:
    """Asphalt is drivable and no walkway, the sidewalk's paving a walkway and not drivable, grass
    neither; half a zebra crossing is bars, a stop line is all paint (up to the 0.1 m cells' edges)."""
    maps = {log["location"]: NuScenesMap(str(synthetic_root), log["location"]) for log in nusc.log}
    fractions, count = layer_fractions(nusc, maps, nusc.sample[::4])
    assert min(count.values()) > 500, count
    asphalt, paving, grass, markings = (fractions[n] for n in ("asphalt", "paving", "grass", "markings"))
    assert asphalt["drivable_area"] > 0.995 and asphalt["walkway"] < 0.005 and asphalt["carpark_area"] < 0.005
    assert fractions["bike_or_parking"]["drivable_area"] > 0.99 and fractions["bike_or_parking"]["carpark_area"] > 0.3
    assert paving["walkway"] > 0.98 and paving["drivable_area"] < 0.02
    assert grass["walkway"] < 0.03 and grass["drivable_area"] < 0.01
    assert fractions["marking"]["drivable_area"] > 0.99 and fractions["marking"]["walkway"] < 0.01
    assert 0.35 < markings["ped_crossing"] < 0.65 and markings["stop_line"] > 0.7 and markings["walkway"] < 0.01


def test_layers_on_point_of_returns_near_the_lidar(nusc: NuScenes, synthetic_root: Path) -> None:
    """layers_on_point (the polygons themselves) for returns near the LiDAR: the ego's lane is asphalt,
    drivable, no walkway; the nearest paving is a walkway, not drivable."""
    sample = nusc.sample[5]
    nusc_map = NuScenesMap(str(synthetic_root), location_of(nusc, sample))
    token = sample["data"]["LIDAR_TOP"]
    lidar2global = sensor_to_global(nusc, token)
    xyz, material = ground_returns(np.fromfile(nusc.get_sample_data_path(token), np.float32).reshape(-1, 5), lidar2global)
    distance = np.linalg.norm(xyz[:, :2], axis=1)
    for name, expected, absent in (("asphalt", "drivable_area", "walkway"), ("paving", "walkway", "drivable_area")):
        nearest = np.flatnonzero(material == name)[np.argsort(distance[material == name])[:5]]
        assert len(nearest) == 5
        for x, y in xyz[nearest, :2] @ lidar2global[:2, :2].T + lidar2global[:2, 3]:
            layers = nusc_map.layers_on_point(x, y, [expected, absent])
            assert layers[expected] != "" and layers[absent] == "", (name, x, y)


def test_vehicles_stand_on_the_drivable_area_and_pedestrians_on_walkways(nusc: NuScenes, synthetic_root: Path) -> None:
    """Cars, trucks, buses, trailers and construction vehicles drive or park on the carriageway;
    pedestrians keep to the sidewalks (bicycles and motorcycles may be on either). Within 60 m of
    the ego: the map reaches MAP_MARGIN beyond its path, and some objects start farther."""
    on_road = {"vehicle.car", "vehicle.truck", "vehicle.bus.rigid", "vehicle.trailer", "vehicle.construction"}
    checked = {"drivable_area": 0, "walkway": 0}
    for scene in nusc.scene:
        sample = nusc.get("sample", scene["first_sample_token"])
        nusc_map = NuScenesMap(str(synthetic_root), location_of(nusc, sample))
        ego = nusc.get("ego_pose", nusc.get("sample_data", sample["data"]["LIDAR_TOP"])["ego_pose_token"])
        for token in sample["anns"]:
            ann = nusc.get("sample_annotation", token)
            if np.hypot(*np.subtract(ann["translation"][:2], ego["translation"][:2])) > 60.0:
                continue
            if ann["category_name"] in on_road:
                on, off = "drivable_area", "walkway"
            elif ann["category_name"].startswith("human.pedestrian"):
                on, off = "walkway", "drivable_area"
            else:
                continue
            layers = nusc_map.layers_on_point(*ann["translation"][:2], [on, off])
            assert layers[on] != "" and layers[off] == "", ann["category_name"]
            checked[on] += 1
    assert min(checked.values()) > 30, checked


def test_scenes_of_one_location_keep_every_other_map_away_from_their_lidar() -> None:
    """48 ten-keyframe scenes: each scene's LiDAR path stays more than MAP_MARGIN from the mapped road
    of every other scene of its location; a scene is moved only when it has to be."""
    duration = 4.5
    worlds = [sample_world(0, index, duration, 13) for index in range(48)]
    offsets = place_scenes(worlds)
    regions = []
    for world, offset in zip(worlds, offsets, strict=True):
        mapped = MappedRoad(world.layout.road, world.layout.mapped_s, tuple(offset))
        layers = map_expansion([mapped], lambda *key: "/".join(map(str, key)))
        nodes = {node["token"]: (node["x"], node["y"]) for node in layers["node"]}
        rings = [[nodes[t] for t in polygon["exterior_node_tokens"]] for polygon in layers["polygon"]]
        regions.append(unary_union([Polygon(ring) for ring in rings]))
    moved = 0
    for index, (world, offset) in enumerate(zip(worlds, offsets, strict=True)):
        path = MultiPoint([world.layout.ego_pose(t)[0] + offset for t in np.linspace(0.0, duration, 10)])
        others = [i for i, other in enumerate(worlds) if other.location == world.location and i != index]
        assert all(path.distance(regions[i]) > MAP_MARGIN for i in others), index
        first_of_location = all(other.location != world.location for other in worlds[:index])
        assert not (first_of_location and np.any(offset != 0))
        moved += bool(np.any(offset != 0))
    assert 0 < moved < 48


def test_a_moved_scene_keeps_its_map_boxes_and_points_together(tmp_path: Path) -> None:
    worlds = [sample_world(SHIFTED["seed"], index, 0.5, 20) for index in range(2)]
    offsets = place_scenes(worlds)
    assert worlds[0].location == worlds[1].location and np.all(offsets[0] == 0) and np.any(offsets[1] != 0)
    root = generate_synthetic_nuscenes(tmp_path / "nuscenes", objects_per_scene=20, **SHIFTED)
    nusc = NuScenes(VERSION, str(root), verbose=False)
    maps = {worlds[0].location: NuScenesMap(str(root), worlds[0].location)}
    moved = [s for s in nusc.sample if nusc.get("scene", s["scene_token"])["name"] == nusc.scene[1]["name"]]
    fractions, count = layer_fractions(nusc, maps, moved)
    assert count["asphalt"] > 1000 and count["paving"] > 100, count
    assert fractions["asphalt"]["drivable_area"] > 0.995 and fractions["paving"]["walkway"] > 0.98
    sample = moved[0]
    token = sample["data"]["LIDAR_TOP"]
    points = np.fromfile(nusc.get_sample_data_path(token), np.float32).reshape(-1, 5)[:, :3]
    lidar2global = sensor_to_global(nusc, token)
    global_points = (points @ lidar2global[:3, :3].T + lidar2global[:3, 3]).T
    for ann_token in sample["anns"]:
        expected = nusc.get("sample_annotation", ann_token)["num_lidar_pts"]
        assert points_in_box(nusc.get_box(ann_token), global_points).sum() == expected
