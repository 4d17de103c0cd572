"""Camera student distilled from mmdet3d's published CenterPoint (0.075 m voxels), UniDistill's camera <- LiDAR
terms and weights. `--teacher_ckpt` takes the mmdet3d checkpoint as downloaded (or its conversion by
tools/convert_checkpoint.py); the camera student's BEV covers the teacher's +-54 m at 0.6 m cells."""

from pathlib import Path

from unikd.exps.cli import run_cli
from unikd.exps.distillation import DistillSettings
from unikd.exps.exp_files import load_exp_class

HERE = Path(__file__).parent
Student = load_exp_class(HERE / "BEVFusion_nuscenes_centerhead_camera_exp.py")
Teacher = load_exp_class(HERE / "BEVFusion_nuscenes_centerhead_lidar_exp.py")


class BEVFusion_nuscenes_centerhead_camera_exp_distill_centerpoint(Student):
    distill = DistillSettings(
        teacher=Teacher,
        teacher_preset="centerpoint_0075",
        weights={"feature": 100.0, "relation": 40.0, "response": 10.0},
    )


if __name__ == "__main__":
    run_cli(BEVFusion_nuscenes_centerhead_camera_exp_distill_centerpoint)
