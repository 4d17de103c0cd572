"""Camera student distilled from the LiDAR + camera fusion teacher (UniDistill terms and weights)."""

from pathlib import Path

from unikd.exps.cli import run_cli
from unikd.exps.distillation import DistillSettings
from unikd.exps.exp_files import load_exp_class

HERE = Path(__file__).parent
Student = load_exp_class(HERE / "BEVFusion_nuscenes_centerhead_camera_exp.py")
Teacher = load_exp_class(HERE / "BEVFusion_nuscenes_centerhead_fusion_exp.py")


class BEVFusion_nuscenes_centerhead_camera_exp_distill_fusion(Student):
    distill = DistillSettings(
        teacher=Teacher,
        teacher_preset="nuscenes",
        weights={"feature": 10.0, "relation": 5.0, "response": 10.0},
    )


if __name__ == "__main__":
    run_cli(BEVFusion_nuscenes_centerhead_camera_exp_distill_fusion)
