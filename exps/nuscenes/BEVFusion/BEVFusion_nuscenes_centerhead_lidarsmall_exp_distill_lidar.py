"""Lighter LiDAR student (0.1 m voxels, narrow) distilled from the 0.075 m LiDAR teacher: the UniDistill
terms plus the combined four-level InfoNCE (voxel_encoder, middle_encoder, backbone, neck)."""

from pathlib import Path

from unikd.exps.cli import run_cli
from unikd.exps.distillation import DistillSettings
from unikd.exps.exp_files import load_exp_class

HERE = Path(__file__).parent
LiDAR = load_exp_class(HERE / "BEVFusion_nuscenes_centerhead_lidar_exp.py")


class BEVFusion_nuscenes_centerhead_lidarsmall_exp_distill_lidar(LiDAR):
    model_size = "student"
    distill = DistillSettings(
        teacher=LiDAR,
        teacher_preset="nuscenes",
        weights={"feature": 10.0, "relation": 1.0, "response": 10.0, "infonce": 1.0},
    )


if __name__ == "__main__":
    run_cli(BEVFusion_nuscenes_centerhead_lidarsmall_exp_distill_lidar)
