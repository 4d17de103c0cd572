"""Camera student distilled from the LiDAR teacher (UniDistill terms and weights). The teacher's dense class
heatmap (heatmap_kd, binary cross-entropy at temperature 2) is declared too and off by default:
`--exp_options distill_weights.heatmap_kd=50` switches it on (docs/RECIPES.md)."""

from pathlib import Path

from unikd.distill.distiller import UNIDISTILL_TERMS
from unikd.exps.cli import run_cli
from unikd.exps.distillation import DistillSettings
from unikd.exps.exp_files import load_exp_class

HERE = Path(__file__).parent
Student = load_exp_class(HERE / "BEVFusion_nuscenes_centerhead_camera_exp.py")
Teacher = load_exp_class(HERE / "BEVFusion_nuscenes_centerhead_lidar_exp.py")


class BEVFusion_nuscenes_centerhead_camera_exp_distill_lidar(Student):
    distill = DistillSettings(
        teacher=Teacher,
        teacher_preset="nuscenes",
        weights={"feature": 100.0, "relation": 40.0, "response": 10.0},
        terms={**UNIDISTILL_TERMS, "heatmap_kd": {"kind": "heatmap_kd", "source": "head", "mode": "bce"}},
    )


if __name__ == "__main__":
    run_cli(BEVFusion_nuscenes_centerhead_camera_exp_distill_lidar)
