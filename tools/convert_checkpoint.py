"""Convert another framework's checkpoint into a unikd one, once, for repeated use.

    python tools/convert_checkpoint.py centerpoint_0075voxel_....pth --out teachers/centerpoint_0075.ckpt
    python tools/convert_checkpoint.py unidistill_lidar.ckpt --out teachers/unidistill_lidar.ckpt

The source format is recognised from its keys and metadata (`unikd.interop`); the unikd model size
from its keys (UniDistill, BEVFusion) or config text (mmdet3d CenterPoint), or `--model-size`; the sensors
from its encoders (UniDistill LiDAR, camera or fusion; BEVFusion-L or -LC; mmdet3d CenterPoint is LiDAR).
The result is a unikd checkpoint of the experiment of that head and those sensors
(`BEVFusion_nuscenes_centerhead_{lidar,camera,fusion}_exp`, `BEVFusion_nuscenes_transfusion_{lidar,fusion}_exp`): pass it as
`--teacher_ckpt` (with `teacher_model_size` = the size printed) or evaluate it with that experiment's
`-e --exp_options model_size=...`. It holds weights only: training cannot resume from it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import pytorch_lightning as pl  # noqa: E402

from unikd.exps.checkpoints import METADATA_KEY, check_state_dict, read_checkpoint, save_atomically  # noqa: E402
from unikd.interop import (  # noqa: E402
    CheckpointFormatError,
    checkpoint_modalities,
    detector_state,
    is_unikd_checkpoint,
    model_size_of,
)
from unikd.models.bevfusion import BEVFusion  # noqa: E402
from unikd.models.configs import model_config  # noqa: E402

EXPERIMENTS = {  # (head type, sensors) -> experiment
    ("center", ("lidar",)): "BEVFusion_nuscenes_centerhead_lidar_exp",
    ("center", ("camera",)): "BEVFusion_nuscenes_centerhead_camera_exp",
    ("center", ("camera", "lidar")): "BEVFusion_nuscenes_centerhead_fusion_exp",
    ("transfusion", ("lidar",)): "BEVFusion_nuscenes_transfusion_lidar_exp",
    ("transfusion", ("camera", "lidar")): "BEVFusion_nuscenes_transfusion_fusion_exp",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model-size", default=None, help="unikd model size (default: from the checkpoint's config)")
    parser.add_argument("--box-convention", choices=("0.x", "1.x"), default=None,
                        help="mmdet3d box convention, when the checkpoint's metadata does not say")
    parser.add_argument("--trust-source", action="store_true",
                        help="read Python objects in the source (runs code from the file: only for files you trust)")
    return parser


def convert(source: Path, out: Path, model_size: str | None, box_convention: str | None, trusted: bool) -> str:
    """Write the unikd checkpoint of `source` to `out`; returns the model size."""
    checkpoint = read_checkpoint(source, "source checkpoint", trusted=trusted)
    try:
        model_size = model_size or model_size_of(checkpoint)
        modalities = tuple(sorted(checkpoint_modalities(checkpoint)))
    except CheckpointFormatError as error:
        raise SystemExit(f"{source}: {error}") from None
    if is_unikd_checkpoint(checkpoint):
        raise SystemExit(f"{source} is a unikd checkpoint already: experiments read it as it is")
    if model_size is None:
        raise SystemExit(f"{source}: neither its keys nor its metadata (a config with a voxel_size) say the model size: pass --model-size")
    config = model_config(model_size, modalities)
    head = config["head"].get("type", "center")
    if (head, modalities) not in EXPERIMENTS:
        raise SystemExit(f"{source}: unikd has no experiment of a {head} head on {'+'.join(modalities)}")
    experiment = EXPERIMENTS[head, modalities]
    model = BEVFusion(config)
    try:
        state, described = detector_state(checkpoint, model.state_dict(), box_convention, config=model.config)
    except CheckpointFormatError as error:
        raise SystemExit(f"{source}: {error}") from None
    target = f"a unikd {'+'.join(modalities)} detector of size {model_size}"
    check_state_dict(state, model.state_dict(), source, target, checkpoint)
    model.load_state_dict(state, strict=True)
    save_atomically(
        {
            "state_dict": {f"model.{key}": value for key, value in model.state_dict().items()},
            "pytorch-lightning_version": pl.__version__,
            METADATA_KEY: {
                "experiment": experiment,
                "model_size": model_size,
                "modalities": list(modalities),
                "version": "v1.0-trainval",
                "converted_from": f"{source.name}: {described}",
            },
        },
        out,
    )
    print(f"{source} ({described}) -> {out}: unikd {experiment}, model_size={model_size}")
    return model_size


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    convert(args.source, args.out, args.model_size, args.box_convention, args.trust_source)


if __name__ == "__main__":
    main()
