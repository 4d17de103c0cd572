"""LiDAR + camera BEVFusion with VeXKD's modality-general fusion module (MGFM) in place of the ConvFuser,
with a CenterHead on nuScenes: a fusion teacher whose BEV queries guide learned distillation masks.

`--exp_options model_size=small_mgfm` is the CPU size; `model_config.fuser.modality_dropout=0.25` trains
with a modality removed from a quarter of the samples; `drop_modality_at_eval=camera` (or lidar) with
`-e` evaluates with that sensor missing.
"""

from unikd.exps.base_exp import BaseExp
from unikd.exps.cli import run_cli


class BEVFusion_nuscenes_centerhead_fusion_mgfm_exp(BaseExp):
    modalities = ("lidar", "camera")
    model_size = "nuscenes_mgfm"

    def check_settings(self) -> None:
        super().check_settings()
        fuser = self.model_config.get("fuser", {"type": "conv"})["type"]
        if fuser != "mgfm":
            raise ValueError(
                f"{type(self).__name__} fuses with an MGFM; model size {self.model_size!r} has fuser type {fuser!r} "
                "(sizes with an MGFM: nuscenes_mgfm, small_mgfm)"
            )


if __name__ == "__main__":
    run_cli(BEVFusion_nuscenes_centerhead_fusion_mgfm_exp)
