"""The command line of tools/distill_study.py and tools/distill_demo.py: one parser, the demo's
defaults set by its tool."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from unikd.study.records import SharedRunBusy
from unikd.study.runs import RunFailed
from unikd.study.study import DEFAULT_CAMERA_PRETRAIN_EPOCHS, StudySettings, run_study
from unikd.study.variants import VariantError, read_variants_file

EXP_DIR = Path(__file__).resolve().parents[2] / "exps" / "nuscenes" / "BEVFusion"
CAMERA_FROM_LIDAR = EXP_DIR / "BEVFusion_nuscenes_centerhead_camera_exp_distill_lidar.py"
# --quick: a short schedule on part of each epoch (the default demo's budget is 30 minutes on 2 cores)
QUICK = {"teacher_epochs": 2, "epochs": 2, "limit_train_batches": "30"}


def build_parser(name: str, seeds: list[int], make_synthetic: bool, distill_options: list[str]) -> argparse.ArgumentParser:
    defaults = StudySettings(pairing=CAMERA_FROM_LIDAR)
    parser = argparse.ArgumentParser(
        description="Teacher, plain and distilled students (of each --variants) on the same schedule and seeds; "
        "evaluated with -e; the paired difference distilled - plain per seed, its mean and 95% t interval in "
        "<output_root>/<name>/<timestamp>/report.{json,md,png}."
    )
    parser.add_argument("--pairing", type=Path, default=CAMERA_FROM_LIDAR, help="distillation experiment file")
    parser.add_argument("--seeds", type=int, nargs="+", default=seeds, help="student seeds")
    parser.add_argument("--epochs", type=int, default=defaults.epochs, help="student epochs")
    parser.add_argument("--teacher_epochs", type=int, default=defaults.teacher_epochs)
    parser.add_argument("--teacher_seed", type=int, default=defaults.teacher_seed)
    parser.add_argument("--model_size", default=defaults.model_size, help="student model size")
    parser.add_argument("--teacher_model_size", default=None, help="default: --model_size")
    parser.add_argument("--data_root", type=Path, default=defaults.data_root)
    parser.add_argument("--version", default=defaults.version)
    parser.add_argument("--train_scenes", type=int, default=defaults.train_scenes, help="of a synthetic set it builds")
    parser.add_argument("--val_scenes", type=int, default=defaults.val_scenes, help="of a synthetic set it builds")
    parser.add_argument("-b", "--batch_size", type=int, default=defaults.batch_size)
    parser.add_argument("--limit_train_batches", default=None, help="passed to every training run")
    parser.add_argument("--limit_val_batches", default=None, help="passed to every validation and -e")
    parser.add_argument("--exp_options", nargs="+", default=[], metavar="KEY=VALUE", help="for every run")
    parser.add_argument("--distill_options", nargs="+", default=distill_options, metavar="KEY=VALUE",
                        help=f"distilled students only (default: {' '.join(distill_options) or 'none'})")
    ablation = parser.add_mutually_exclusive_group()
    ablation.add_argument("--variants", nargs="+", default=[], metavar="OPTIONS",
                          help="an ablation: each a quoted set of distilled-student options after --distill_options, e.g. "
                          "'feature=10' 'feature=0 relation=40' (a key that is no experiment setting is a term weight: "
                          "feature=10 is distill_weights.feature=10); one shared teacher, pretraining and plain student "
                          "per seed, one report row per variant")
    ablation.add_argument("--variants_file", type=Path, default=None,
                          help="the variants in a file: one per line (# comments), or a JSON list")
    parser.add_argument("--camera_pretrain_epochs", type=int, default=defaults.camera_pretrain_epochs,
                        help="epochs of depth pretraining of a camera student's image branch, shared by both students "
                        f"(0: none; default: {DEFAULT_CAMERA_PRETRAIN_EPOCHS} for a camera student)")
    parser.add_argument("--output_root", type=Path, default=defaults.output_root)
    parser.add_argument("--name", default=name, help="report folder: <output_root>/<name>/<timestamp>/")
    parser.add_argument("--jobs", type=int, default=None, help="parallel runs (default: one per GPU, else per core)")
    parser.add_argument("--make_synthetic", action=argparse.BooleanOptionalAction, default=make_synthetic,
                        help="build the synthetic set at --data_root if it is absent")
    parser.add_argument("--score_threshold", type=float, default=defaults.score_threshold, help="boxes in the figure")
    parser.add_argument("--quick", action="store_true",
                        help=f"a short schedule: {' '.join(f'--{k} {v}' for k, v in QUICK.items())}")
    return parser


def main(name: str, seeds: list[int], make_synthetic: bool, distill_options: list[str] | None = None,
         argv: list[str] | None = None) -> None:
    """Parse the arguments and run the study; a failed run exits with its log's tail."""
    args = build_parser(name, seeds, make_synthetic, distill_options or []).parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    try:
        variants = read_variants_file(args.variants_file) if args.variants_file else args.variants
    except VariantError as error:
        sys.exit(str(error))
    settings = StudySettings(
        pairing=args.pairing, name=args.name, seeds=tuple(args.seeds), epochs=args.epochs,
        teacher_epochs=args.teacher_epochs, teacher_seed=args.teacher_seed, model_size=args.model_size,
        teacher_model_size=args.teacher_model_size, data_root=args.data_root, version=args.version,
        train_scenes=args.train_scenes, val_scenes=args.val_scenes,
        batch_size=args.batch_size, limit_train_batches=args.limit_train_batches,
        limit_val_batches=args.limit_val_batches, exp_options=tuple(args.exp_options),
        distill_options=tuple(args.distill_options), variants=tuple(variants), output_root=args.output_root, jobs=args.jobs,
        make_synthetic=args.make_synthetic, score_threshold=args.score_threshold,
        camera_pretrain_epochs=args.camera_pretrain_epochs,
    )
    try:
        run_study(settings, [Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)])
    except (RunFailed, FileNotFoundError, VariantError, SharedRunBusy) as failure:
        sys.exit(str(failure))
