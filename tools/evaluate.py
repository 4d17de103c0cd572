"""Score a nuScenes detection submission JSON (any model's) with the fast metric.

    python tools/evaluate.py SUBMISSION --data_root DIR --version VER --split SPLIT [--out PATH] [--backend devkit]

Prints the devkit-style summary and per-class table and writes the metrics summary JSON (the layout of
the devkit's metrics_summary.json, the submission's meta included) to --out, by default
<submission stem>_metrics_summary.json next to the submission. As the devkit requires, the submission
lists every sample of the split and no other. `--backend devkit` runs the devkit's DetectionEval instead.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from unikd.data.infos import check_dataroot, load_nuscenes  # noqa: E402
from unikd.evaluation import (  # noqa: E402
    GroundTruth,
    NuScenesDetectionMetric,
    format_metrics,
    prepare_ground_truth,
    read_submission,
    write_metrics_summary,
)
from unikd.evaluation.devkit_eval import evaluate_with_devkit  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("submission", help="nuScenes detection submission JSON (meta + results)")
    parser.add_argument("--data_root", required=True, help="nuScenes data root")
    parser.add_argument("--version", required=True, help="e.g. v1.0-trainval, v1.0-mini")
    parser.add_argument("--split", required=True, help="e.g. val, mini_val")
    parser.add_argument("--out", default=None, help="metrics summary JSON to write")
    parser.add_argument("--backend", choices=("metric", "devkit"), default="metric")
    return parser


def check_samples(submission: Path, tokens: list[str], gt: GroundTruth) -> None:
    """The devkit's rule: the submission's samples are exactly the split's."""
    unknown = [token for token in tokens if token not in gt.sample_index]
    if unknown:
        raise ValueError(
            f"submission {submission}: {len(unknown)} of its {len(tokens)} samples are not in the "
            f"{gt.eval_set} split of {gt.version}, e.g. {unknown[0]}"
        )
    missing = sorted(set(gt.sample_tokens) - set(tokens))
    if missing:
        raise ValueError(
            f"submission {submission} has no results for {len(missing)} of the {len(gt.sample_tokens)} samples "
            f"of {gt.eval_set}, e.g. {missing[0]}; the devkit needs every sample (an empty list where nothing "
            "was detected)"
        )


def evaluate(args: argparse.Namespace) -> Path:
    """Check the inputs, score the submission, print the summary, write it; returns the path written."""
    submission = Path(args.submission)
    meta, records = read_submission(submission)
    check_dataroot(args.data_root, args.version)
    nusc = load_nuscenes(args.data_root, args.version) if args.backend == "devkit" else None
    gt = prepare_ground_truth(nusc or (args.version, str(args.data_root)), args.split)
    check_samples(submission, [record["sample_token"] for record in records], gt)
    if args.backend == "devkit":
        with tempfile.TemporaryDirectory() as output_dir:
            summary = evaluate_with_devkit(nusc, submission, args.split, output_dir)  # prints its summary
    else:
        metric = NuScenesDetectionMetric(gt)
        metric.update(records)
        metric.compute()
        summary = metric.summary
        print(format_metrics(summary))
    out = Path(args.out) if args.out else submission.with_name(f"{submission.stem}_metrics_summary.json")
    write_metrics_summary(summary, out, meta=meta)
    print(f"metrics summary written to {out}")
    return out


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        evaluate(args)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
