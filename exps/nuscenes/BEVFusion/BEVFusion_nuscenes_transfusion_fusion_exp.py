"""LiDAR + camera BEVFusion as mmdet3d's BEVFusion-LC builds it (Swin-T, GeneralizedLSSFPN, DepthLSSTransform,
ConvFuser, TransFusionHead): the BEVFusion teacher. `--ckpt_path`/`--teacher_ckpt` take mmdet3d's or
mit-han-lab's checkpoints as downloaded (`unikd.interop.bevfusion`)."""

from unikd.exps.base_exp import BaseExp
from unikd.exps.cli import run_cli


class BEVFusion_nuscenes_transfusion_fusion_exp(BaseExp):
    modalities = ("lidar", "camera")
    model_size = "bevfusion_fusion"


if __name__ == "__main__":
    run_cli(BEVFusion_nuscenes_transfusion_fusion_exp)
