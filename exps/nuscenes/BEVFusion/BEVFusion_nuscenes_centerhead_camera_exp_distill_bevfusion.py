"""Camera student distilled from BEVFusion-LC (mmdet3d's LiDAR + camera BEVFusion with its TransFusionHead).
The teacher's head has no dense regression maps, so UniDistill's response term cannot apply: the student imitates
its fused BEV (feature), its neck's relations (relation) and its dense class heatmap (heatmap_kd: the
CenterHead's task heatmaps hold the same ten classes in the same order)."""

from pathlib import Path

from unikd.distill.distiller import UNIDISTILL_TERMS
from unikd.exps.cli import run_cli
from unikd.exps.distillation import DistillSettings
from unikd.exps.exp_files import load_exp_class

HERE = Path(__file__).parent
Student = load_exp_class(HERE / "BEVFusion_nuscenes_centerhead_camera_exp.py")
Teacher = load_exp_class(HERE / "BEVFusion_nuscenes_transfusion_fusion_exp.py")


class BEVFusion_nuscenes_centerhead_camera_exp_distill_bevfusion(Student):
    distill = DistillSettings(
        teacher=Teacher,
        teacher_preset="bevfusion_fusion",
        weights={"feature": 10.0, "relation": 5.0, "heatmap_kd": 10.0},
        terms={**UNIDISTILL_TERMS, "heatmap_kd": {"kind": "heatmap_kd", "source": "head"}},
    )


if __name__ == "__main__":
    run_cli(BEVFusion_nuscenes_centerhead_camera_exp_distill_bevfusion)
