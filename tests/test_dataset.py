"""The nuScenes dataset reader on the synthetic database: frames, sweeps, images, errors."""

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from unikd.data.collate import collate_batch
from unikd.data.image_aug import ImageAugConfig
from unikd.data.infos import load_nuscenes, sensor_to_global
from unikd.data.nuscenes_boxes import lidar_boxes_to_global
from unikd.data.nuscenes_dataset import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    NuScenesDetectionDataset,
    load_points,
)
from unikd.data.transforms import BEVAugConfig, boxes_in_range

RANGE = (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0)


@pytest.fixture(scope="module")
def val_dataset(synthetic_root: Path) -> NuScenesDetectionDataset:
    return NuScenesDetectionDataset(synthetic_root, "v1.0-mini", "mini_val", RANGE, num_sweeps=3)


def points_in_lidar_boxes(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Count of points inside each [x, y, z, l, w, h, yaw] box, by moving points into the box frame."""
    counts = []
    for x, y, z, length, width, height, yaw, *_ in boxes:
        d = points[:, :3] - np.array([x, y, z])
        local_x = np.cos(yaw) * d[:, 0] + np.sin(yaw) * d[:, 1]
        local_y = -np.sin(yaw) * d[:, 0] + np.cos(yaw) * d[:, 1]
        inside = (np.abs(local_x) <= length / 2) & (np.abs(local_y) <= width / 2) & (np.abs(d[:, 2]) <= height / 2)
        counts.append(int(inside.sum()))
    return np.array(counts)


def test_key_frame_boxes_hold_their_annotated_points(val_dataset: NuScenesDetectionDataset) -> None:
    """Boxes converted into the LiDAR frame (l/w order, yaw, centre) contain exactly the devkit's points."""
    checked = 0
    for index in (0, 7, 13):
        item = val_dataset[index]
        info = val_dataset.infos[index]
        valid = info["num_lidar_pts"] + info["num_radar_pts"] > 0
        in_range = boxes_in_range(info["gt_boxes"][valid], RANGE)
        annotated = info["num_lidar_pts"][valid][in_range]
        key_points = item["points"][item["points"][:, 4] == 0].numpy()
        counts = points_in_lidar_boxes(key_points, item["gt_boxes"].numpy())
        assert len(counts) == len(annotated)
        np.testing.assert_allclose(counts, annotated, atol=1, rtol=0.02)
        checked += int((annotated > 0).sum())
    assert checked > 20


def test_boxes_match_devkit_global_boxes(synthetic_root: Path, val_dataset: NuScenesDetectionDataset) -> None:
    """LiDAR-frame GT moved back to global equals the devkit's annotation (centre, size, yaw, velocity)."""
    nusc = load_nuscenes(synthetic_root, "v1.0-mini")
    info = val_dataset.infos[5]
    sample = nusc.get("sample", info["token"])
    np.testing.assert_allclose(info["lidar2global"], sensor_to_global(nusc, sample["data"]["LIDAR_TOP"]))
    fields = lidar_boxes_to_global(info["gt_boxes"], info["lidar2global"])
    anns = [nusc.get("sample_annotation", t) for t in sample["anns"]]
    anns = [a for a in anns if not a["category_name"].startswith("static_object")]
    assert len(anns) == len(info["gt_boxes"])
    for i, ann in enumerate(anns):
        np.testing.assert_allclose(fields["translation"][i], ann["translation"], atol=1e-6)
        np.testing.assert_allclose(fields["size"][i], ann["size"], atol=1e-6)
        np.testing.assert_allclose(np.abs(np.dot(fields["rotation"][i], ann["rotation"])), 1.0, atol=1e-6)
        np.testing.assert_allclose(fields["velocity"][i], np.nan_to_num(nusc.box_velocity(ann["token"])[:2]), atol=1e-6)


def test_sweeps_match_the_devkit_multisweep_loader(synthetic_root: Path, val_dataset: NuScenesDetectionDataset) -> None:
    """Key frame + 2 sweeps in the key LiDAR frame, with time lags, as the devkit's own loader gives them."""
    from nuscenes.utils.data_classes import LidarPointCloud
    from scipy.spatial import cKDTree

    nusc = load_nuscenes(synthetic_root, "v1.0-mini")
    index = 6
    ours = val_dataset[index]["points"].numpy()
    sample = nusc.get("sample", val_dataset.infos[index]["token"])
    cloud, times = LidarPointCloud.from_file_multisweep(nusc, sample, "LIDAR_TOP", "LIDAR_TOP", nsweeps=3)
    theirs = np.concatenate([cloud.points[:3].T, times.T], axis=1)
    theirs = theirs[np.all((theirs[:, :3] >= RANGE[:3]) & (theirs[:, :3] < RANGE[3:]), axis=1)]
    lags = np.unique(ours[:, 4])
    assert len(lags) == 3 and lags[0] == 0 and 0 < lags[1] < lags[2] < 0.5
    np.testing.assert_allclose(np.unique(np.round(theirs[:, 3], 4)), np.round(lags, 4), atol=1e-4)
    for lag in lags:
        mine = ours[np.isclose(ours[:, 4], lag)]
        reference = theirs[np.isclose(theirs[:, 3], lag, atol=1e-4)]
        distance, _ = cKDTree(mine[:, :3]).query(reference[:, :3])
        assert len(reference) > 1000
        assert np.quantile(distance, 0.999) < 1e-3  # the devkit drops points within 1 m; every other matches


def test_augmentation_moves_points_and_boxes_together(synthetic_root: Path) -> None:
    plain = NuScenesDetectionDataset(synthetic_root, "v1.0-mini", "mini_val", RANGE, num_sweeps=1)
    augmented = NuScenesDetectionDataset(
        synthetic_root, "v1.0-mini", "mini_val", RANGE, num_sweeps=1, training=True, bev_aug=BEVAugConfig(), seed=3
    )
    item, aug = plain[2], augmented[2]
    assert not torch.allclose(aug["bda"], torch.eye(4))
    counts = points_in_lidar_boxes(item["points"].numpy(), item["gt_boxes"].numpy())
    aug_counts = points_in_lidar_boxes(aug["points"].numpy(), aug["gt_boxes"].numpy())
    assert aug_counts.sum() > 0.9 * counts.sum()  # boxes near the range edge may leave
    same = {tuple(np.round(b[3:6] / np.cbrt(abs(np.linalg.det(aug["bda"][:3, :3].numpy()))), 3)) for b in aug["gt_boxes"].numpy()}
    assert same <= {tuple(np.round(b[3:6], 3)) for b in item["gt_boxes"].numpy()}


@pytest.mark.parametrize("reduced_decode", [False, True])
def test_camera_images_follow_their_ida_matrix(synthetic_root: Path, reduced_decode: bool) -> None:
    """A pixel of the original JPEG appears at img_aug @ (u, v) in the augmented image (decoded in full, or at a
    reduced DCT scale)."""
    from PIL import Image

    dataset = NuScenesDetectionDataset(
        synthetic_root, "v1.0-mini", "mini_val", RANGE, num_sweeps=1, use_camera=True, training=True, seed=1,
        image_aug=ImageAugConfig(reduced_decode=reduced_decode),
    )
    item = dataset[4]
    info = dataset.infos[4]
    assert item["imgs"].shape == (6, 3, 256, 704)
    original = np.asarray(Image.open(synthetic_root / info["cams"]["CAM_FRONT"]["path"]).convert("RGB"), np.float32)
    image = item["imgs"][0].permute(1, 2, 0).numpy() * IMAGENET_STD + IMAGENET_MEAN
    ida = item["img_aug"][0].numpy().astype(np.float64)
    rng = np.random.default_rng(0)
    errors = []
    for _ in range(400):
        u, v = rng.uniform(50, 1550), rng.uniform(400, 850)
        au, av = (ida @ np.array([u, v, 0.0, 1.0]))[:2]
        if 2 <= au < 700 and 2 <= av < 252:
            errors.append(np.abs(image[round(av), round(au)] * 255 - original[round(v), round(u)]).mean())
    assert len(errors) > 100
    assert np.median(errors) < 12  # interpolation and JPEG; a wrong matrix gives tens


def test_collate_keeps_variable_sizes(val_dataset: NuScenesDetectionDataset) -> None:
    batch = collate_batch([val_dataset[0], val_dataset[1]])
    assert [len(p) for p in batch["points"]] == [len(val_dataset[0]["points"]), len(val_dataset[1]["points"])]
    assert batch["bda"].shape == (2, 4, 4) and batch["index"].tolist() == [0, 1]
    assert len(batch["gt_boxes"]) == 2 and batch["gt_boxes"][0].shape[1] == 9


def test_missing_root_and_tables_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        NuScenesDetectionDataset(tmp_path / "nowhere", "v1.0-mini", "mini_val", RANGE)
    (tmp_path / "v1.0-mini").mkdir()
    (tmp_path / "v1.0-mini" / "sample.json").write_text("[]")
    with pytest.raises(FileNotFoundError, match="sample_data.json"):
        NuScenesDetectionDataset(tmp_path, "v1.0-mini", "mini_val", RANGE)
    with pytest.raises(ValueError, match="unknown nuScenes version"):
        NuScenesDetectionDataset(tmp_path, "v2.0", "mini_val", RANGE)


def test_truncated_point_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "cloud.pcd.bin"
    np.arange(7, dtype=np.float32).tofile(path)
    with pytest.raises(ValueError, match="point cloud .*cloud.pcd.bin: truncated"):
        load_points(path)
    with pytest.raises(FileNotFoundError, match="missing.pcd.bin"):
        load_points(tmp_path / "missing.pcd.bin")


def linked_copy(root: Path, destination: Path) -> Path:
    """A copy of a dataset made of hard links (instant): change a file with `replace_file`, never in place."""
    return Path(shutil.copytree(root, destination, copy_function=os.link))


def replace_file(path: Path, data: bytes) -> None:
    """New content at `path`, leaving the file it was linked to as it is."""
    path.unlink()
    path.write_bytes(data)


def test_missing_and_truncated_files_fail_at_start(
    synthetic_root: Path, val_dataset: NuScenesDetectionDataset, tmp_path: Path
) -> None:
    """Every bad file of the split in one error when the dataset is made, not when an epoch reaches it."""
    root = linked_copy(synthetic_root, tmp_path / "nuscenes")
    infos = val_dataset.infos
    truncated = root / infos[3]["sweeps"][1]["path"]
    replace_file(truncated, truncated.read_bytes()[:-7])
    missing_points = root / infos[5]["lidar_path"]
    missing_image = root / infos[2]["cams"]["CAM_BACK"]["path"]
    missing_points.unlink()
    missing_image.unlink()
    with pytest.raises(OSError, match=r"3 of the \d+ files of split 'mini_val' are missing, truncated or unreadable") as error:
        NuScenesDetectionDataset(root, "v1.0-mini", "mini_val", RANGE, num_sweeps=3, use_camera=True)
    assert f"{truncated} (truncated: " in str(error.value)
    assert f"{missing_points} (No such file or directory)" in str(error.value)
    assert f"{missing_image} (No such file or directory)" in str(error.value)
    with pytest.raises(OSError, match=r"2 of the \d+ files"):  # images only with use_camera
        NuScenesDetectionDataset(root, "v1.0-mini", "mini_val", RANGE, num_sweeps=3)


def test_corrupt_camera_image_names_the_file_and_sample(synthetic_root: Path, tmp_path: Path) -> None:
    root = linked_copy(synthetic_root, tmp_path / "nuscenes")
    dataset = NuScenesDetectionDataset(root, "v1.0-mini", "mini_val", RANGE, num_sweeps=1, use_camera=True)
    info = dataset.infos[4]
    image = root / info["cams"]["CAM_FRONT_LEFT"]["path"]
    replace_file(image, image.read_bytes()[: image.stat().st_size // 2])
    with pytest.raises(OSError, match=re.escape(f"{image} of sample {info['token']}")) as error:
        dataset[4]
    assert "image file is truncated" in str(error.value.__cause__)
