"""Camera student distilled from the LiDAR teacher (UniDistill terms and weights). The teacher's dense class
heatmap (heatmap_kd, binary cross-entropy at temperature 2) is declared too and off by default:
`--exp_options distill_weights.heatmap_kd=50` switches it on (docs/RECIPES.md)."""

from pathlib import Path

from unikd.distill.distiller import UNIDISTILL_TERMS
from unikd.exps.cli import run_cli
from unikd.exps.distill_exp import DistillExp, load_exp_class

HERE = Path(__file__).parent
Student = load_exp_class(HERE / "BEVFusion_nuscenes_centerhead_camera_exp.py")
Teacher = load_exp_class(HERE / "BEVFusion_nuscenes_centerhead_lidar_exp.py")


class BEVFusion_nuscenes_centerhead_camera_exp_distill_lidar(DistillExp, Student):
    teacher_exp_class = Teacher
    teacher_model_size = "nuscenes"
    distill_terms = {**UNIDISTILL_TERMS, "heatmap_kd": {"kind": "heatmap_kd", "source": "head", "mode": "bce"}}
    distill_weights = {"feature": 100.0, "relation": 40.0, "response": 10.0}


if __name__ == "__main__":
    run_cli(BEVFusion_nuscenes_centerhead_camera_exp_distill_lidar)
