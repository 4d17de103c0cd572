"""LiDAR-only BEVFusion with a BEV map segmentation head on nuScenes (BEVFusion's map classes, mIoU)."""

from unikd.exps.base_exp import BaseExp
from unikd.exps.cli import run_cli


class BEVFusion_nuscenes_seg_lidar_exp(BaseExp):
    modalities = ("lidar",)
    task = "segmentation"
    model_size = "nuscenes_seg"


if __name__ == "__main__":
    run_cli(BEVFusion_nuscenes_seg_lidar_exp)
