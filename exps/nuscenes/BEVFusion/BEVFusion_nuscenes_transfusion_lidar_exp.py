"""LiDAR-only BEVFusion with mmdet3d BEVFusion-L's TransFusionHead on nuScenes."""

from unikd.exps.base_exp import BaseExp
from unikd.exps.cli import run_cli


class BEVFusion_nuscenes_transfusion_lidar_exp(BaseExp):
    modalities = ("lidar",)
    model_size = "bevfusion_lidar"


if __name__ == "__main__":
    run_cli(BEVFusion_nuscenes_transfusion_lidar_exp)
