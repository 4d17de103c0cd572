"""nuScenes detection dataset: real and synthetic databases through the same code."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from unikd.data.checks import (
    POINT_FILE_DIMS,
    check_files,
    check_infos,
    finite_points,
    point_file_problem,
    raise_findings,
    split_files,
)
from unikd.data.classes import CAMERAS, CLASSES
from unikd.data.image_aug import ImageAugConfig, apply_image_aug, ida_matrix, open_reduced, sample_image_aug
from unikd.data.infos import load_or_build_infos
from unikd.data.map_targets import MAP_GRID, MapTargets
from unikd.data.mmdet3d_infos import read_mmdet3d_infos
from unikd.data.transforms import (
    BEVAugConfig,
    apply_bda_to_boxes,
    apply_bda_to_points,
    boxes_in_range,
    points_in_range,
    sample_bda,
)
from unikd.ops.bev_grid import BEVGrid

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def load_points(path: str | os.PathLike) -> np.ndarray:
    """[N, 5] float32 points of a `.pcd.bin` file; a clear error when missing, empty, truncated or not finite."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"point cloud file not found: {path}")
    problem = point_file_problem(path)
    if problem is not None:
        raise ValueError(f"point cloud {path}: {problem}")
    return finite_points(np.fromfile(path, dtype=np.float32).reshape(-1, POINT_FILE_DIMS), path)


def check_split_files(data_root: Path, infos: list[dict], split: str, num_sweeps: int, use_camera: bool) -> None:
    """One error naming the missing, empty, truncated or unreadable files that `infos` will read: a stat of
    each, and of each image its header and end (no decoding; points are checked finite when loaded)."""
    points, images = split_files(infos, num_sweeps, use_camera)
    findings = check_files(data_root, points, images)
    if findings:
        more = f"; and {len(findings) - 5} more" if len(findings) > 5 else ""
        raise OSError(
            f"{len(findings)} of the {len(points) + len(images)} files of split {split!r} are missing, truncated or "
            f"unreadable: {'; '.join(f'{f.subject} ({f.problem})' for f in findings[:5])}{more}"
        )


class NuScenesDetectionDataset(Dataset):
    """Key frames of a nuScenes split with their sweeps, camera images and GT boxes.

    Every item is in the key frame's LIDAR_TOP frame after the BEV augmentation (`bda`). Points are
    always loaded (the LiDAR branch, a camera model's depth supervision, the BEV pictures); images
    only with `use_camera`. The samples come from the devkit (`load_or_build_infos`), or from the
    mmdet3d info file `infos_file` of this split (`read_mmdet3d_infos`, with `infos_box_convention`).
    With `map_segmentation`, an item also holds `gt_masks_bev` [len(MAP_CLASSES), H, W] bool on
    `map_grid` (`unikd.data.map_targets`), read from `<data_root>/maps/expansion/<location>.json`.
    """

    def __init__(
        self,
        data_root: str | os.PathLike,
        version: str,
        split: str,
        point_cloud_range: tuple[float, ...],
        num_sweeps: int = 10,
        use_camera: bool = False,
        training: bool = False,
        bev_aug: BEVAugConfig | None = None,
        image_aug: ImageAugConfig | None = None,
        seed: int = 0,
        infos_file: str | os.PathLike | None = None,
        infos_box_convention: str | None = None,
        map_segmentation: bool = False,
        map_grid: BEVGrid = MAP_GRID,
    ) -> None:
        self.data_root = Path(data_root)
        self.version = version
        self.split = split
        self.point_cloud_range = tuple(point_cloud_range)
        self.num_sweeps = num_sweeps
        self.use_camera = use_camera
        self.training = training
        self.bev_aug = bev_aug if training else None
        self.image_aug = image_aug or ImageAugConfig()
        self.seed = seed
        self.epoch = 0
        if infos_file is None:
            self.infos = load_or_build_infos(self.data_root, version, split, max_sweeps=num_sweeps)
        else:
            self.infos = read_mmdet3d_infos(infos_file, version, num_sweeps, infos_box_convention)
        if not self.infos:
            source = infos_file or f"{self.data_root}/{version}"
            raise ValueError(f"split {split!r} of {source} has no samples")
        raise_findings(check_infos(self.infos), f"the records of split {split!r} of {infos_file or self.data_root}")
        check_split_files(self.data_root, self.infos, split, num_sweeps, use_camera)
        self.map_targets = self._map_targets(map_grid, infos_file) if map_segmentation else None

    def _map_targets(self, grid: BEVGrid, infos_file: str | os.PathLike | None) -> MapTargets:
        unplaced = sum(1 for info in self.infos if not info["location"])
        if unplaced:
            source = infos_file or f"{self.data_root}/{self.version}"
            raise ValueError(
                f"map segmentation needs the map location of every sample; {unplaced} of the {len(self.infos)} "
                f"samples of {source} have none (mmdet3d's own info files do not record it, BEVFusion's do): "
                "read the split through the devkit (no infos file)"
            )
        return MapTargets(self.data_root, {info["location"] for info in self.infos}, grid)

    def __len__(self) -> int:
        return len(self.infos)

    def set_epoch(self, epoch: int) -> None:
        """Vary the augmentation per epoch while keeping each (epoch, index) reproducible."""
        self.epoch = epoch

    def __getitem__(self, index: int | tuple[int, int]) -> dict:
        """The sample at `index` augmented for the epoch of `set_epoch`, or at `(index, epoch)` for that epoch
        (`unikd.data.samplers.EpochTaggedSampler`: a persistent worker's copy of the dataset keeps its epoch)."""
        index, epoch = index if isinstance(index, tuple) else (index, self.epoch)
        info = self.infos[index]
        rng = np.random.default_rng([self.seed, epoch, index])
        bda = sample_bda(self.bev_aug, rng) if self.bev_aug is not None else np.eye(4)

        boxes, labels = self.ground_truth(info)
        boxes = apply_bda_to_boxes(boxes, bda)
        keep = boxes_in_range(boxes, self.point_cloud_range)
        item = {
            "gt_boxes": torch.from_numpy(boxes[keep]).float(),
            "gt_labels": torch.from_numpy(labels[keep]),
            "bda": torch.from_numpy(bda).float(),
            "lidar2global": torch.from_numpy(info["lidar2global"]).float(),
            "sample_token": info["token"],
            "index": index,
        }
        # The LiDAR feeds the LiDAR branch, and a camera model's depth supervision.
        points = apply_bda_to_points(self.load_sweeps(info), bda)
        item["points"] = torch.from_numpy(points[points_in_range(points, self.point_cloud_range)])
        if self.use_camera:
            item.update(self.load_cameras(info, rng))
        if self.map_targets is not None:
            item["gt_masks_bev"] = torch.from_numpy(self.map_targets(info["location"], info["lidar2global"], bda))
        return item

    def ground_truth(self, info: dict) -> tuple[np.ndarray, np.ndarray]:
        """Boxes of the 10 classes that hold at least one LiDAR or radar point."""
        valid = (info["num_lidar_pts"] + info["num_radar_pts"]) > 0
        boxes = info["gt_boxes"][valid]
        labels = np.array([CLASSES.index(name) for name in info["gt_names"][valid]], dtype=np.int64)
        return boxes, labels

    def load_sweeps(self, info: dict) -> np.ndarray:
        """Key frame plus up to num_sweeps-1 earlier sweeps, in the key LiDAR frame, [N, 5] with time lag."""
        key = load_points(self.data_root / info["lidar_path"])[:, :4]
        clouds = [np.concatenate([key, np.zeros((len(key), 1), np.float32)], axis=1)]
        for sweep in info["sweeps"][: self.num_sweeps - 1]:
            points = load_points(self.data_root / sweep["path"])[:, :4].copy()
            transform = sweep["sensor2lidar"]
            points[:, :3] = points[:, :3] @ transform[:3, :3].T.astype(np.float32) + transform[:3, 3].astype(np.float32)
            lag = np.full((len(points), 1), sweep["time_lag"], dtype=np.float32)
            clouds.append(np.concatenate([points, lag], axis=1))
        return np.concatenate(clouds, axis=0).astype(np.float32)

    def load_cameras(self, info: dict, rng: np.random.Generator) -> dict:
        imgs, cam2img, lidar2cam, img_aug = [], [], [], []
        for channel in CAMERAS:
            cam = info["cams"][channel]
            path = self.data_root / cam["path"]
            try:
                with Image.open(path) as file:
                    params = sample_image_aug(self.image_aug, *file.size, rng, self.training)
                    if self.image_aug.reduced_decode:
                        image, original_size = open_reduced(file, params["resize"])
                    else:
                        image, original_size = file.convert("RGB"), None
            except OSError as error:
                raise OSError(f"cannot read camera image {path} of sample {info['token']}: {error}") from error
            image = apply_image_aug(image, **params, original_size=original_size)
            array = (np.asarray(image, dtype=np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
            imgs.append(torch.from_numpy(array).permute(2, 0, 1))
            cam2img.append(cam["cam2img"])
            lidar2cam.append(cam["lidar2cam"])
            img_aug.append(ida_matrix(**params))
        return {
            "imgs": torch.stack(imgs),
            "cam2img": torch.from_numpy(np.stack(cam2img)).float(),
            "lidar2cam": torch.from_numpy(np.stack(lidar2cam)).float(),
            "img_aug": torch.from_numpy(np.stack(img_aug)).float(),
        }
