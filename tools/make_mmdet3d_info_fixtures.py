"""Write the mmdet3d info files that tests/test_mmdet3d_infos.py reads, made by mmdet3d's own converter.

Run it where mmdet3d 1.4.0 (with its mmcv and mmengine) and nuscenes-devkit are installed, with a
checkout of mmdetection3d v1.4.0 (its tools/ folder is not in the pip package):

    git clone --depth 1 -b v1.4.0 https://github.com/open-mmlab/mmdetection3d /tmp/mmdet3d_src
    python tools/make_mmdet3d_info_fixtures.py --mmdet3d-src /tmp/mmdet3d_src

It writes the small synthetic set `SYNTHETIC` (unikd.data.synthetic; the same arguments always give
the same bytes) in a temporary folder and runs on it, as `tools/create_data.py nuscenes` does but
without the ground-truth database:

- `tools/dataset_converters/nuscenes_converter.py` `create_nuscenes_infos`: the 0.x layout
  (`infos` + `metadata`) in box convention 1.x, as mmdet3d 1.0.0rc wrote it -> `1.0rc/`;
- `tools/dataset_converters/update_infos_to_v2.py` `update_pkl_infos` on those: the 1.x layout
  (`metainfo` + `data_list`), as `create_data.py nuscenes` leaves it -> `1.x/`;
- `tools/update_data_coords.py nuscenes` on those: the 0.x layout in box convention 0.x, as
  mmdet3d < 1.0 and BEVFusion wrote it (the update swaps l and w and maps yaw to -yaw - pi/2, its
  own inverse) -> `0.x/`.

Each folder under tests/fixtures/mmdet3d_infos/ holds `nuscenes_infos_train.pkl` and
`nuscenes_infos_val.pkl`; `synthetic.json` holds the generation arguments and the versions used.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from unikd.data.synthetic import generate_synthetic_nuscenes  # noqa: E402

OUT = REPO / "tests" / "fixtures" / "mmdet3d_infos"
# 2 scenes (1 mini_train, 1 mini_val) of 4 key frames with 3 sweeps between: the last key frame has
# 12 earlier LiDAR frames, so mmdet3d's cut at 10 sweeps shows.
SYNTHETIC = {
    "version": "v1.0-mini",
    "seed": 0,
    "train_scenes": 1,
    "val_scenes": 1,
    "keyframes_per_scene": 4,
    "sweeps_per_keyframe": 3,
    "objects_per_scene": 20,
    "lidar_noise": 0.02,
    "workers": 1,
}
MAX_SWEEPS = 10  # create_data.py's default
FILES = ("nuscenes_infos_train.pkl", "nuscenes_infos_val.pkl")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mmdet3d-src", required=True, type=Path, help="mmdetection3d checkout holding tools/")
    parser.add_argument("--out", type=Path, default=OUT, help="output folder")
    args = parser.parse_args(argv)
    out, tools = args.out.resolve(), args.mmdet3d_src.resolve() / "tools"  # before the chdir below
    sys.path.insert(0, str(tools / "dataset_converters"))
    import mmdet3d
    import nuscenes_converter
    from update_infos_to_v2 import update_pkl_infos

    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        # update_infos_to_v2 opens the database at ./data/nuscenes
        generate_synthetic_nuscenes(work / "data" / "nuscenes", **SYNTHETIC)
        os.chdir(work)
        nuscenes_converter.create_nuscenes_infos(
            "./data/nuscenes", "nuscenes", version=SYNTHETIC["version"], max_sweeps=MAX_SWEEPS
        )
        rc = work / "1.0rc"
        rc.mkdir()
        for name in FILES:
            shutil.copy(work / "data" / "nuscenes" / name, rc / name)
        v1 = work / "1.x"
        v1.mkdir()
        for name in FILES:
            update_pkl_infos("nuscenes", out_dir=str(v1), pkl_path=str(rc / name))
        legacy = work / "0.x"
        legacy.mkdir()
        update_data_coords(tools, rc, legacy)

        out.mkdir(parents=True, exist_ok=True)
        for folder in (rc, v1, legacy):
            shutil.rmtree(out / folder.name, ignore_errors=True)
            shutil.copytree(folder, out / folder.name)
    made = {"synthetic": SYNTHETIC, "max_sweeps": MAX_SWEEPS, "mmdet3d": mmdet3d.__version__}
    (out / "synthetic.json").write_text(json.dumps(made, indent=2) + "\n")
    for path in sorted(out.rglob("*")):
        if path.is_file():
            print(f"{path}: {path.stat().st_size} bytes")


def update_data_coords(tools: Path, source: Path, out: Path) -> None:
    """mmdet3d's tools/update_data_coords.py on `source`'s files; for v1.0-mini it reads the train file
    as `nuscenes_infos_train_tiny.pkl` (and leaves the ground-truth database alone)."""
    staged = out.parent / "0.x-input"
    staged.mkdir()
    shutil.copy(source / FILES[0], staged / "nuscenes_infos_train_tiny.pkl")
    shutil.copy(source / FILES[1], staged / FILES[1])
    command = [sys.executable, str(tools / "update_data_coords.py"), "nuscenes", "--version", SYNTHETIC["version"]]
    subprocess.run([*command, "--root-dir", str(staged), "--out-dir", str(out)], check=True)
    (out / "nuscenes_infos_train_tiny.pkl").rename(out / FILES[0])


if __name__ == "__main__":
    main()
