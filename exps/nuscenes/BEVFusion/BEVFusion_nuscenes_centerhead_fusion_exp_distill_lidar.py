"""Fusion student distilled from the LiDAR teacher (UniDistill terms; weights as LiDAR <- fusion)."""

from pathlib import Path

from unikd.exps.cli import run_cli
from unikd.exps.distillation import DistillSettings
from unikd.exps.exp_files import load_exp_class

HERE = Path(__file__).parent
Student = load_exp_class(HERE / "BEVFusion_nuscenes_centerhead_fusion_exp.py")
Teacher = load_exp_class(HERE / "BEVFusion_nuscenes_centerhead_lidar_exp.py")


class BEVFusion_nuscenes_centerhead_fusion_exp_distill_lidar(Student):
    distill = DistillSettings(
        teacher=Teacher,
        teacher_preset="nuscenes",
        weights={"feature": 10.0, "relation": 1.0, "response": 10.0},
    )


if __name__ == "__main__":
    run_cli(BEVFusion_nuscenes_centerhead_fusion_exp_distill_lidar)
