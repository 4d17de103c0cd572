"""Camera-only BEVFusion (LSS view transform) with a CenterHead on nuScenes."""

from unikd.exps.base_exp import BaseExp
from unikd.exps.cli import run_cli


class BEVFusion_nuscenes_centerhead_camera_exp(BaseExp):
    modalities = ("camera",)


if __name__ == "__main__":
    run_cli(BEVFusion_nuscenes_centerhead_camera_exp)
