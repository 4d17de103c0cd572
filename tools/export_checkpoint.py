"""Export a unikd LiDAR detector as a checkpoint of another framework.

    python tools/export_checkpoint.py outputs/.../last.ckpt --to mmdet3d-centerpoint --out centerpoint.pth

`mmdet3d-centerpoint`: a detector whose configuration is one of mmdet3d's published CenterPoint
models (model size `centerpoint_0075` or `centerpoint_01`, e.g. a LiDAR student distilled at that
size) becomes an mmdet3d checkpoint (`state_dict` + `meta`) that mmdet3d's CenterPoint of the
named config loads strictly. Sparse kernels are written in spconv 1.x layout without spconv-2
metadata, which mmdet3d reads with either sparse-convolution backend.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from unikd.data.classes import CLASSES  # noqa: E402
from unikd.exps.checkpoints import METADATA_KEY, check_state_dict, read_checkpoint, save_atomically  # noqa: E402
from unikd.interop import detector_state  # noqa: E402
from unikd.interop.mmdet3d_centerpoint import PUBLISHED, unikd_to_centerpoint  # noqa: E402
from unikd.models.bevfusion import BEVFusion  # noqa: E402
from unikd.models.configs import model_config  # noqa: E402

CENTERPOINT_SIZES = {size: config for size, config in PUBLISHED.values()}


def export_centerpoint(source: Path, out: Path, model_size: str | None = None) -> str:
    """Write `source` (a unikd checkpoint) as an mmdet3d CenterPoint checkpoint; returns the config name."""
    checkpoint = read_checkpoint(source, "unikd checkpoint")
    meta = checkpoint.get(METADATA_KEY) or {}
    model_size = model_size or meta.get("model_size")
    if model_size not in CENTERPOINT_SIZES:
        raise SystemExit(
            f"{source} has model_size={model_size}: only {sorted(CENTERPOINT_SIZES)} are mmdet3d CenterPoint "
            "configurations (pass --model-size if the checkpoint does not record it)"
        )
    model = BEVFusion(model_config(model_size, ("lidar",)))
    state, _ = detector_state(checkpoint, model.state_dict())
    check_state_dict(state, model.state_dict(), source, f"a CenterPoint-shaped detector ({model_size})", checkpoint)
    config = CENTERPOINT_SIZES[model_size]
    save_atomically(
        {
            "state_dict": unikd_to_centerpoint(state, spconv_version=1),
            "meta": {
                "config_name": config,
                "box_convention": "1.x",
                "exported_by": "unikd",
                "dataset_meta": {"classes": list(CLASSES)},
            },
        },
        out,
    )
    print(f"{source} -> {out}: mmdet3d {config}")
    return config


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path)
    parser.add_argument("--to", choices=("mmdet3d-centerpoint",), required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model-size", default=None, help="when the checkpoint does not record it")
    args = parser.parse_args(argv)
    export_centerpoint(args.source, args.out, args.model_size)


if __name__ == "__main__":
    main()
