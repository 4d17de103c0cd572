"""LiDAR + camera BEVFusion (ConvFuser) with a CenterHead on nuScenes: the fusion teacher."""

from unikd.exps.base_exp import BaseExp
from unikd.exps.cli import run_cli


class BEVFusion_nuscenes_centerhead_fusion_exp(BaseExp):
    modalities = ("lidar", "camera")


if __name__ == "__main__":
    run_cli(BEVFusion_nuscenes_centerhead_fusion_exp)
