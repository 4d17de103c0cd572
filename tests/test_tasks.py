"""The evaluation task of an experiment, chosen by its `task`: what its datasets read and what it refuses."""

from pathlib import Path

import pytest

from unikd.data.map_targets import MAP_CLASSES
from unikd.exps.depth_task import DepthTask
from unikd.exps.exp_files import load_exp_class
from unikd.exps.tasks import EVALUATION_TASKS, DetectionTask, SegmentationTask

EXP_DIR = Path(__file__).resolve().parents[1] / "exps/nuscenes/BEVFusion"
SEG = load_exp_class(EXP_DIR / "BEVFusion_nuscenes_seg_lidar_exp.py")
LIDAR = load_exp_class(EXP_DIR / "BEVFusion_nuscenes_centerhead_lidar_exp.py")


def test_the_task_name_picks_the_task_class() -> None:
    assert EVALUATION_TASKS == {"detection": DetectionTask, "segmentation": SegmentationTask, "depth": DepthTask}
    assert isinstance(SEG(exp_options={"model_size": "small"}).evaluation, SegmentationTask)
    assert isinstance(LIDAR(exp_options={"model_size": "small"}).evaluation, DetectionTask)


def test_segmentation_datasets_give_map_targets_on_the_heads_grid(synthetic_root: Path) -> None:
    exp = SEG(data_root=str(synthetic_root), exp_options={"model_size": "small", "num_sweeps": 1})
    grid = exp.model.seg_head.output_grid
    assert exp.datamodule.settings.map_grid == grid
    masks = exp.datamodule.val_dataset()[1]["gt_masks_bev"]
    assert tuple(masks.shape) == (len(MAP_CLASSES), grid.height, grid.width)
    detection = LIDAR(data_root=str(synthetic_root), exp_options={"model_size": "small", "num_sweeps": 1})
    assert detection.datamodule.settings.map_grid is None
    assert "gt_masks_bev" not in detection.datamodule.val_dataset()[1]


def test_unknown_task_and_a_detection_backend_for_segmentation_are_refused() -> None:
    with pytest.raises(ValueError, match=r"task must be one of \('depth', 'detection', 'segmentation'\), got 'tracking'"):
        LIDAR(exp_options={"model_size": "small", "task": "tracking"})
    with pytest.raises(ValueError, match="eval_backend 'devkit' evaluates detection; segmentation uses 'metric'"):
        SEG(exp_options={"model_size": "small", "eval_backend": "devkit"})
