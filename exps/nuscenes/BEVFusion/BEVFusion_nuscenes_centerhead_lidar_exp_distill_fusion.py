"""LiDAR student distilled from the LiDAR + camera fusion teacher (UniDistill terms and weights)."""

from pathlib import Path

from unikd.exps.cli import run_cli
from unikd.exps.distill_exp import DistillExp, load_exp_class

HERE = Path(__file__).parent
Student = load_exp_class(HERE / "BEVFusion_nuscenes_centerhead_lidar_exp.py")
Teacher = load_exp_class(HERE / "BEVFusion_nuscenes_centerhead_fusion_exp.py")


class BEVFusion_nuscenes_centerhead_lidar_exp_distill_fusion(DistillExp, Student):
    teacher_exp_class = Teacher
    teacher_model_size = "nuscenes"
    distill_weights = {"feature": 10.0, "relation": 1.0, "response": 10.0}


if __name__ == "__main__":
    run_cli(BEVFusion_nuscenes_centerhead_lidar_exp_distill_fusion)
