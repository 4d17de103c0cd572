"""The command line every experiment file runs: train, evaluate (-e) or predict (-p)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

from unikd.exps.options import parse_options

RUN_DIR_ENV = "UNIKD_RUN_DIR"  # shared by the DDP processes Lightning starts


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train (default), evaluate (-e) or predict (-p) an experiment.")
    parser.add_argument("-b", "--batch_size", type=int, default=1, help="batch size per device")
    parser.add_argument("--gpus", type=int, default=None, help="number of GPUs (DDP when > 1); 0 = CPU")
    parser.add_argument("--devices", type=int, default=None, help="processes on CPU (gloo DDP when > 1)")
    parser.add_argument("-e", "--evaluate", action="store_true", help="evaluate --ckpt_path on the validation split")
    parser.add_argument("-p", "--predict", action="store_true", help="write a nuScenes submission JSON")
    parser.add_argument("--ckpt_path", default=None, help="checkpoint to resume training from or to evaluate")
    parser.add_argument("--allow_untrained", action="store_true", help="let -e/-p run without --ckpt_path")
    parser.add_argument("--max_epochs", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data_root", default="data/nuscenes")
    parser.add_argument("--version", default=None, help="nuScenes version, e.g. v1.0-mini or v1.0-trainval")
    parser.add_argument("--output_root", default="outputs")
    parser.add_argument("--teacher_ckpt", default=None, help="teacher checkpoint (distillation experiments)")
    parser.add_argument("--eval_backend", choices=("metric", "devkit"), default=None)
    parser.add_argument("--exp_options", nargs="+", default=[], metavar="KEY=VALUE", help="override experiment attributes")
    trainer = parser.add_argument_group("Lightning Trainer options")
    trainer.add_argument("--precision", default=None, help="e.g. 32, 16-mixed, bf16-mixed")
    trainer.add_argument("--limit_train_batches", type=float, default=None)
    trainer.add_argument("--limit_val_batches", type=float, default=None)
    trainer.add_argument("--check_val_every_n_epoch", type=int, default=None)
    trainer.add_argument("--log_every_n_steps", type=int, default=10)
    trainer.add_argument("--accumulate_grad_batches", type=int, default=1)
    trainer.add_argument("--no_progress_bar", action="store_true")
    return parser


def accelerator_and_devices(gpus: int | None, devices: int | None) -> tuple[str, int, str]:
    """(accelerator, devices, strategy): CUDA when asked for and present, else CPU processes."""
    if gpus and torch.cuda.is_available():
        count = gpus
        accelerator = "gpu"
    else:
        if gpus:
            print(f"--gpus {gpus} asked for, but CUDA is not available: running on CPU", file=sys.stderr)
        count = devices or 1
        accelerator = "cpu"
    strategy = "ddp" if count > 1 else "auto"
    return accelerator, count, strategy


def make_run_dir(output_root: str, exp_name: str) -> Path:
    """outputs/<exp_name>/<timestamp>/ with a `latest` link beside it.

    The launching process creates it; the DDP processes Lightning starts (LOCAL_RANK > 0) inherit it.
    """
    if os.environ.get("LOCAL_RANK", "0") != "0" and os.environ.get(RUN_DIR_ENV):
        return Path(os.environ[RUN_DIR_ENV])
    exp_root = Path(output_root) / exp_name
    run_dir = exp_root / datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    run_dir.mkdir(parents=True)
    latest = exp_root / "latest"
    tmp = exp_root / f".latest-{os.getpid()}"
    tmp.symlink_to(run_dir.name)
    tmp.replace(latest)
    os.environ[RUN_DIR_ENV] = str(run_dir)
    return run_dir


def run_cli(exp_class: type, argv: list[str] | None = None) -> pl.LightningModule:
    """Parse the command line, build the experiment and run it. Returns the experiment."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.evaluate or args.predict) and not args.ckpt_path and not args.allow_untrained:
        parser.error("-e/-p need --ckpt_path (or --allow_untrained to evaluate random weights)")
    if args.ckpt_path and not Path(args.ckpt_path).is_file():
        parser.error(f"--ckpt_path {args.ckpt_path} does not exist")
    if args.ckpt_path:  # resolve `latest/...` now: this run re-points `latest` at itself
        args.ckpt_path = str(Path(args.ckpt_path).resolve())

    pl.seed_everything(args.seed, workers=True)
    options = parse_options(args.exp_options)
    if args.max_epochs is not None:
        options["max_epochs"] = args.max_epochs
    if args.version is not None:
        options["version"] = args.version
    if args.eval_backend is not None:
        options["eval_backend"] = args.eval_backend
    exp_kwargs = {key: getattr(args, key) for key in exp_class.cli_arguments}
    if args.teacher_ckpt and "teacher_ckpt" not in exp_kwargs:
        parser.error(f"--teacher_ckpt is for distillation experiments; {exp_class.__name__} has no teacher")
    run_dir = make_run_dir(args.output_root, exp_class.__name__)
    exp = exp_class(
        batch_size_per_device=args.batch_size,
        data_root=args.data_root,
        seed=args.seed,
        output_dir=str(run_dir),
        exp_options=options,
        **exp_kwargs,
    )
    (run_dir / "config.json").write_text(json.dumps({"argv": sys.argv, "args": vars(args)}, indent=2, default=str))

    accelerator, devices, strategy = accelerator_and_devices(args.gpus, args.devices)
    trainer_kwargs = {
        key: getattr(args, key)
        for key in ("precision", "limit_train_batches", "limit_val_batches", "check_val_every_n_epoch")
        if getattr(args, key) is not None
    }
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=devices,
        strategy=strategy,
        max_epochs=exp.max_epochs,
        default_root_dir=str(run_dir),
        logger=[TensorBoardLogger(str(run_dir), name="tensorboard"), CSVLogger(str(run_dir), name="csv")],
        callbacks=[
            # every epoch, whether or not it validates, so that a crash loses at most one epoch
            ModelCheckpoint(
                dirpath=str(run_dir / "checkpoints"),
                save_last=True,
                save_top_k=-1,
                every_n_epochs=1,
                save_on_train_epoch_end=True,
            ),
            LearningRateMonitor(logging_interval="step"),
        ],
        gradient_clip_val=exp.grad_clip,
        log_every_n_steps=args.log_every_n_steps,
        accumulate_grad_batches=args.accumulate_grad_batches,
        enable_progress_bar=not args.no_progress_bar,
        num_sanity_val_steps=0,
        **trainer_kwargs,
    )
    if args.predict and devices > 1:
        parser.error("-p writes one submission file: run it on one device")
    if args.evaluate:
        trainer.validate(exp, ckpt_path=args.ckpt_path)
    elif args.predict:
        predictions = trainer.predict(exp, ckpt_path=args.ckpt_path)
        if trainer.is_global_zero:
            from unikd.evaluation.submission import write_submission

            records = [record for batch in predictions for record in batch]
            path = write_submission(
                records,
                run_dir / "submission.json",
                use_lidar="lidar" in exp.modalities,
                use_camera="camera" in exp.modalities,
            )
            print(f"submission written to {path}")
    else:
        trainer.fit(exp, ckpt_path=args.ckpt_path)
    return exp
