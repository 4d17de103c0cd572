"""Dataset preparation.

    python tools/create_data.py synthetic --root data/nuscenes-synthetic [--version v1.0-mini] [--seed 0]

    python tools/create_data.py infos --root data/nuscenes [--version v1.0-trainval] [--max-sweeps 10]

`synthetic` writes a synthetic dataset in the nuScenes format (see unikd.data.synthetic).
`infos` caches the per-sample records of every split next to a database (see unikd.data.infos),
so that runs start without building them through the devkit.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from unikd.data.infos import SPLITS_BY_VERSION, write_infos  # noqa: E402
from unikd.data.synthetic import generate_synthetic_nuscenes  # noqa: E402
from unikd.data.synthetic.generate import VERSIONS  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    synthetic = commands.add_parser("synthetic", help="write a synthetic nuScenes-format dataset")
    synthetic.add_argument("--root", required=True, help="output folder (new or empty)")
    synthetic.add_argument("--version", default="v1.0-mini", choices=sorted(VERSIONS))
    synthetic.add_argument("--seed", type=int, default=0)
    synthetic.add_argument("--train-scenes", type=int, default=None, help="default: 8 (mini), 20 (trainval)")
    synthetic.add_argument("--val-scenes", type=int, default=None, help="default: 2 (mini), 10 (trainval)")
    synthetic.add_argument("--keyframes-per-scene", type=int, default=10)
    synthetic.add_argument(
        "--sweeps-per-keyframe", type=int, default=4, help="LiDAR sweeps between key frames"
    )
    synthetic.add_argument("--objects-per-scene", type=int, default=60)
    synthetic.add_argument(
        "--lidar-noise", type=float, default=0.02, help="range noise std in metres (0: exact)"
    )
    synthetic.add_argument(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="processes building scenes in parallel",
    )
    infos = commands.add_parser("infos", help="cache the per-sample records of a nuScenes database")
    infos.add_argument("--root", required=True, help="nuScenes data root")
    infos.add_argument("--version", default="v1.0-mini", choices=sorted(SPLITS_BY_VERSION))
    infos.add_argument("--max-sweeps", type=int, default=10, help="sweeps per sample, key frame included")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "synthetic":
        start = time.perf_counter()
        root = generate_synthetic_nuscenes(
            args.root,
            version=args.version,
            seed=args.seed,
            train_scenes=args.train_scenes,
            val_scenes=args.val_scenes,
            keyframes_per_scene=args.keyframes_per_scene,
            sweeps_per_keyframe=args.sweeps_per_keyframe,
            objects_per_scene=args.objects_per_scene,
            lidar_noise=args.lidar_noise,
            workers=args.workers,
        )
        print(f"wrote {args.version} to {root} in {time.perf_counter() - start:.1f} s")
    elif args.command == "infos":
        for path in write_infos(args.root, args.version, args.max_sweeps):
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
