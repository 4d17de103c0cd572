"""LiDAR map segmentation student distilled from the LiDAR + camera fusion segmentation teacher: BEV features
imitated over the whole map (fitnet) and the per-cell binary KL of the segmentation logits."""

from pathlib import Path

from unikd.distill.distiller import SEGMENTATION_TERMS
from unikd.exps.cli import run_cli
from unikd.exps.distillation import DistillSettings
from unikd.exps.exp_files import load_exp_class

HERE = Path(__file__).parent
Student = load_exp_class(HERE / "BEVFusion_nuscenes_seg_lidar_exp.py")
Teacher = load_exp_class(HERE / "BEVFusion_nuscenes_seg_fusion_exp.py")


class BEVFusion_nuscenes_seg_lidar_exp_distill_fusion(Student):
    distill = DistillSettings(
        teacher=Teacher,
        teacher_preset="nuscenes_seg",
        weights={"fitnet": 1.0, "masked": 0.0, "seg_response": 10.0},
        terms=SEGMENTATION_TERMS,
    )


if __name__ == "__main__":
    run_cli(BEVFusion_nuscenes_seg_lidar_exp_distill_fusion)
