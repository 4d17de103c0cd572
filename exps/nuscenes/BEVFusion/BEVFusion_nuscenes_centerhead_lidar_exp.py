"""LiDAR-only BEVFusion with a CenterHead on nuScenes."""

from unikd.exps.base_exp import BaseExp
from unikd.exps.cli import run_cli


class BEVFusion_nuscenes_centerhead_lidar_exp(BaseExp):
    modalities = ("lidar",)


if __name__ == "__main__":
    run_cli(BEVFusion_nuscenes_centerhead_lidar_exp)
