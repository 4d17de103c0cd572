"""Pre-flight check of what a training run would read: every finding named by file, record or token.

    python tools/check_data.py --data_root DIR [--version v1.0-mini] [--infos FILE_OR_FOLDER ...]
                               [--infos_box_convention 0.x|1.x] [--num_sweeps 10] [--out DIR] [--overlays 2]

The records come from the nuScenes tables (every split of --version) or from mmdet3d info files
(--infos: files, or a folder of nuscenes_infos_*.pkl). Checked (`unikd.data.checks`, the checks a run
makes at its start, and more): every point file read whole and finite; every image's header and end;
boxes, matrices, sweeps and timestamps of every record; with the tables, every calibration and
ego-pose quaternion and each scene's sample order; per box, the key-frame points inside against the
annotation's `num_lidar_pts`; per sample, the share of boxes whose centre projects into one of the six
cameras and of key-frame points that land on an image (a calibration in the wrong frame shows there).
Prints a summary table and the worst cases by token, writes every finding to <out>/findings.txt and,
for --overlays samples, one PNG per camera (<out>/overlays/<token>_<camera>.png: key-frame points
coloured by depth, GT boxes in green). Exits 1 when something was found.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from unikd.data.checks import (  # noqa: E402
    DataError,
    Finding,
    box_point_findings,
    check_files,
    check_infos,
    count_points_in_boxes,
    pose_table_findings,
    scene_order_findings,
    split_files,
)
from unikd.data.classes import CAMERAS  # noqa: E402
from unikd.data.infos import (  # noqa: E402
    SPLITS_BY_VERSION,
    load_nuscenes,
    sample_info,
    samples_of_split,
    scene_tokens_of_split,
)
from unikd.data.mmdet3d_infos import read_mmdet3d_infos  # noqa: E402

WORST_SHOWN = 10


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_root", required=True, help="nuScenes data root (samples/, sweeps/, <version>/)")
    parser.add_argument("--version", default="v1.0-mini", choices=sorted(SPLITS_BY_VERSION))
    parser.add_argument("--infos", nargs="+", default=None, help="mmdet3d info files, or a folder of them, instead of the tables")
    parser.add_argument("--infos_box_convention", default=None, choices=("0.x", "1.x"), help="of 0.x-layout info files")
    parser.add_argument("--num_sweeps", type=int, default=10, help="frames per sample a run reads (key frame included)")
    parser.add_argument("--out", default="check_data", help="folder for findings.txt and the overlays")
    parser.add_argument("--overlays", type=int, default=2, help="samples drawn, one PNG per camera each")
    return parser


def read_records(args: argparse.Namespace) -> tuple[dict[str, list[dict]], list[Finding]]:
    """Records per source (a split, or an info file) and the findings of reading them."""
    if args.infos:
        files = [p for path in map(Path, args.infos) for p in (sorted(path.glob("nuscenes_infos_*.pkl")) if path.is_dir() else [path])]
        return {str(f): read_mmdet3d_infos(f, args.version, args.num_sweeps, args.infos_box_convention) for f in files}, []
    nusc = load_nuscenes(args.data_root, args.version)
    findings = pose_table_findings(nusc)
    records = {}
    for split in SPLITS_BY_VERSION[args.version]:
        findings += scene_order_findings(nusc, scene_tokens_of_split(nusc, split))
        records[split] = []
        for sample, scene, location in samples_of_split(nusc, split):
            try:
                records[split].append(sample_info(nusc, sample, scene, location, args.num_sweeps))
            except DataError as error:  # a record whose calibration is unusable (already among the findings)
                findings.append(Finding("calibration", f"sample {sample['token']}", f"not read: {error}"))
    return records, findings


def projection(info: dict, points: np.ndarray, sizes: dict[str, tuple[int, int]]) -> tuple[float, float]:
    """(share of boxes whose centre projects into a camera, share of key-frame points beyond 1 m that do)."""

    def visible(xyz: np.ndarray) -> np.ndarray:
        seen = np.zeros(len(xyz), dtype=bool)
        for channel, cam in info["cams"].items():
            if channel not in sizes:
                continue
            pixels, depth = project(xyz, cam)
            width, height = sizes[channel]
            seen |= (depth > 0.1) & (pixels[:, 0] >= 0) & (pixels[:, 0] < width) & (pixels[:, 1] >= 0) & (pixels[:, 1] < height)
        return seen

    far = points[np.linalg.norm(points[:, :2], axis=1) > 1.0, :3]
    boxes = info["gt_boxes"][:, :3]
    box_share = float(visible(boxes).mean()) if len(boxes) else 1.0
    return box_share, float(visible(far).mean()) if len(far) else 0.0


def project(xyz: np.ndarray, cam: dict) -> tuple[np.ndarray, np.ndarray]:
    """Pixels [N, 2] and depth [N] of LiDAR-frame points in one camera of a record."""
    homogeneous = np.concatenate([xyz, np.ones((len(xyz), 1))], axis=1) @ cam["lidar2cam"].T
    depth = homogeneous[:, 2]
    pixels = (homogeneous @ cam["cam2img"].T)[:, :2] / np.maximum(depth, 1e-6)[:, None]
    return pixels, depth


def draw_overlays(data_root: Path, info: dict, points: np.ndarray, out: Path) -> list[Path]:
    """One PNG per camera: the image, the key-frame points coloured by depth, the GT boxes' edges."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from unikd.utils.visualization import BOX_EDGES, box_corners_3d

    written = []
    out.mkdir(parents=True, exist_ok=True)
    corners = box_corners_3d(info["gt_boxes"]) if len(info["gt_boxes"]) else np.zeros((0, 8, 3))
    for channel in CAMERAS:
        cam = info["cams"][channel]
        with Image.open(data_root / cam["path"]) as file:
            image = np.asarray(file.convert("RGB"))
        height, width = image.shape[:2]
        pixels, depth = project(points[:, :3], cam)
        seen = (depth > 0.5) & (pixels[:, 0] >= 0) & (pixels[:, 0] < width) & (pixels[:, 1] >= 0) & (pixels[:, 1] < height)
        fig, ax = plt.subplots(figsize=(width / 100, height / 100), dpi=100)
        ax.imshow(image)
        ax.scatter(pixels[seen, 0], pixels[seen, 1], c=np.minimum(depth[seen], 60), cmap="jet_r", s=1.5, linewidths=0)
        for box in corners:
            box_pixels, box_depth = project(box, cam)
            if (box_depth > 0.5).all():
                for a, b in BOX_EDGES:
                    ax.plot(box_pixels[[a, b], 0], box_pixels[[a, b], 1], color="lime", linewidth=1.2)
        ax.set_xlim(0, width)
        ax.set_ylim(height, 0)
        ax.set_axis_off()
        ax.set_title(f"{info['token']} {channel}: points by depth, GT boxes green", fontsize=9)
        fig.tight_layout(pad=0.2)
        path = out / f"{info['token']}_{channel}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


def check_source(args: argparse.Namespace, name: str, infos: list[dict], rows: list, worst: list) -> list[Finding]:
    """The checks of one source's records; a summary row per check, worst samples by projection."""
    root = Path(args.data_root)
    points_files, images = split_files(infos, args.num_sweeps, use_camera=True)
    file_findings = check_files(root, points_files, images, read_points=True)
    bad_files = {f.subject for f in file_findings}
    findings = check_infos(infos) + file_findings
    box_findings, boxes_checked, shares = [], 0, []
    from PIL import Image

    for info in infos:
        key = root / info["lidar_path"]
        if str(key) in bad_files:
            continue
        points = np.fromfile(key, dtype=np.float32).reshape(-1, 5)
        counts = count_points_in_boxes(points, info["gt_boxes"])
        box_findings += box_point_findings(info, counts)
        boxes_checked += len(counts)
        sizes = {}
        for channel, cam in info["cams"].items():
            if str(root / cam["path"]) not in bad_files:
                with Image.open(root / cam["path"]) as file:
                    sizes[channel] = file.size
        box_share, point_share = projection(info, points, sizes)
        shares.append((box_share, point_share, info["token"]))
    findings += box_findings
    kinds = Counter(f.check for f in findings)
    rows += [
        (name, "records", len(infos), kinds["box"] + kinds["calibration"] + kinds["timestamp"]),
        (name, "point files (read)", len(points_files), sum(f.check == "point file" for f in file_findings)),
        (name, "images (header, end)", len(images), kinds["image"]),
        (name, "boxes: points vs num_lidar_pts", boxes_checked, kinds["box points"]),
    ]
    if shares:
        box_mean, point_mean = np.mean([s[0] for s in shares]), np.mean([s[1] for s in shares])
        rows.append((name, f"boxes in a camera {box_mean:.1%}, points {point_mean:.1%}", len(shares), 0))
        worst += sorted(shares)[:WORST_SHOWN]
    return findings


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    out = Path(args.out)
    records, findings = read_records(args)
    rows: list[tuple[str, str, int, int]] = [("tables", "quaternions, scene order", 1, len(findings))] if not args.infos else []
    worst: list[tuple[float, float, str]] = []
    for name, infos in records.items():
        findings += check_source(args, name, infos, rows, worst)
    overlays = []
    drawable = [info for infos in records.values() for info in infos]
    for info in drawable[:: max(len(drawable) // max(args.overlays, 1), 1)][: args.overlays]:
        points = np.fromfile(Path(args.data_root) / info["lidar_path"], dtype=np.float32).reshape(-1, 5)
        try:
            overlays += draw_overlays(Path(args.data_root), info, points, out / "overlays")
        except OSError as error:
            print(f"no overlay of sample {info['token']}: {error}")

    width = max(len(row[0]) for row in rows) if rows else 6
    print(f"{'source':<{width}}  {'check':<44} {'checked':>8} {'problems':>9}")
    for source, check, checked, problems in rows:
        print(f"{source:<{width}}  {check:<44} {checked:>8} {problems:>9}")
    if worst:
        print("lowest share of boxes / points in a camera:")
        for box_share, point_share, token in sorted(worst)[:WORST_SHOWN]:
            print(f"  sample {token}: boxes {box_share:.1%}, points {point_share:.1%}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "findings.txt").write_text("".join(f"[{f.check}] {f}\n" for f in findings))
    by_subject = Counter(f.subject for f in findings)
    if findings:
        print(f"{len(findings)} problem(s); most per file, record or sample:")
        for subject, count in by_subject.most_common(WORST_SHOWN):
            first = next(f for f in findings if f.subject == subject)
            print(f"  {count} x {first}")
    print(f"{len(overlays)} overlays in {out / 'overlays'}; every finding in {out / 'findings.txt'} ({time.perf_counter() - start:.1f} s)")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
