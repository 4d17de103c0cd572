"""Depth pretraining of the camera branch (image backbone, neck, depth net) on LiDAR depth; camera
experiments start from it with `--exp_options camera_init=<run>/checkpoints/last.ckpt`."""

from unikd.exps.cli import run_cli
from unikd.exps.depth_pretrain_exp import CameraDepthPretrainExp


class BEVFusion_nuscenes_camera_depth_pretrain_exp(CameraDepthPretrainExp):
    pass


if __name__ == "__main__":
    run_cli(BEVFusion_nuscenes_camera_depth_pretrain_exp)
