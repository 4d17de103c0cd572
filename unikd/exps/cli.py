"""The command line every experiment file runs: train, evaluate (-e) or predict (-p).

Everything that can be checked without training is checked before the trainer starts: the
arguments, the experiment's options, the checkpoints (read and matched against the model), the
datasets (`NuScenesDataModule.setup`) and the ground truth (`BaseExp.setup`).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from pytorch_lightning.plugins.environments import SLURMEnvironment

from unikd.exps.checkpoints import (
    METADATA_KEY,
    AtomicCheckpointIO,
    CheckpointError,
    check_state_dict,
    describe_checkpoint,
    experiment_hint,
    load_detector_checkpoint,
    read_checkpoint,
    remove_partial_checkpoints,
)
from unikd.exps.distributed import RankSeeding, ddp_strategy
from unikd.exps.interrupt import CheckpointOnSignal, TrainingInterrupted
from unikd.exps.options import parse_options
from unikd.exps.run_dir import discard_if_empty, is_launch_rank_zero, point_latest, resolve_run_dir
from unikd.exps.run_lock import RunLock
from unikd.exps.step_checkpoints import NewestStepCheckpoint
from unikd.interop import is_unikd_checkpoint
from unikd.ops.precision import enable_tf32
from unikd.ops.spconv_compat import check_cuda_build

# autocast ("-mixed") keeps the weights, the voxelization, the losses and BatchNorm in float32; "-true"
# precisions would cast the whole model and its inputs (point coordinates) to 16 bits.
PRECISIONS = ("32", "16-mixed", "bf16-mixed")
CPU_PRECISIONS = ("32",)  # the CPU build of spconv computes in float32 only


def precision_setting(text: str) -> str:
    """One of PRECISIONS; any other Lightning precision is refused with the reason."""
    if text in PRECISIONS:
        return text
    if text in ("16-true", "bf16-true"):
        reason = (
            "casts the whole model and its inputs to 16 bits: the voxelization (point coordinates), the losses and "
            "BatchNorm would compute in 16 bits (on CPU, 77,501 of 120,000 voxels matched float32)"
        )
    else:
        reason = "is not a precision unikd trains in"
    raise argparse.ArgumentTypeError(
        f"{text!r} {reason}; choose one of {', '.join(PRECISIONS)} (the mixed ones on GPUs: autocast with float32 "
        "weights, voxelization and losses)"
    )


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text}")
    return value


def batches_or_fraction(text: str) -> int | float:
    """A whole number counts batches ('1' is one batch); a number with a decimal point is a fraction
    of the epoch in [0, 1] ('1.0' is all of it), as Lightning reads ints and floats."""
    try:
        value: int | float = float(text) if any(c in text for c in ".eE") else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of batches or a fraction, got {text!r}") from None
    if value < 0 or (isinstance(value, float) and value > 1):
        raise argparse.ArgumentTypeError(f"expected a batch count >= 0 or a fraction in [0, 1], got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train (default), evaluate (-e) or predict (-p) an experiment.")
    parser.add_argument("-b", "--batch_size", type=positive_int, default=1, help="batch size per device")
    parser.add_argument("--gpus", type=int, default=None, help="GPUs per node (DDP when > 1); 0 = CPU")
    parser.add_argument("--devices", type=positive_int, default=None, help="processes per node on CPU (gloo DDP)")
    parser.add_argument("--num_nodes", type=positive_int, default=1, help="machines (multi-node DDP, see README)")
    parser.add_argument("--sync_batchnorm", action="store_true", help="SyncBatchNorm over all GPUs")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("-e", "--evaluate", action="store_true", help="evaluate --ckpt_path on the validation split")
    mode.add_argument("-p", "--predict", action="store_true", help="write a nuScenes submission JSON")
    parser.add_argument("--ckpt_path", default=None, help="checkpoint to resume training from or to evaluate")
    parser.add_argument("--allow_untrained", action="store_true", help="let -e/-p run without --ckpt_path")
    parser.add_argument("--max_epochs", type=positive_int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data_root", default="data/nuscenes")
    parser.add_argument("--version", default=None, help="nuScenes version, e.g. v1.0-mini or v1.0-trainval")
    parser.add_argument(
        "--infos",
        nargs="+",
        default=None,
        metavar="PATH",
        help="read mmdet3d info files instead of the devkit: a folder holding nuscenes_infos_{train,val}.pkl, "
        "or one file per split (train val); a pickle runs code when loaded: name only files you trust",
    )
    parser.add_argument(
        "--infos_box_convention",
        choices=("0.x", "1.x"),
        default=None,
        help="box convention of 0.x-layout (infos + metadata) files: 0.x (mmdet3d < 1.0, BEVFusion), 1.x (1.0.0rc)",
    )
    parser.add_argument("--output_root", default="outputs")
    parser.add_argument("--run_name", default=None, help="run folder name (the same on every node of a run)")
    parser.add_argument("--teacher_ckpt", default=None, help="teacher checkpoint (distillation experiments)")
    parser.add_argument("--eval_backend", choices=("metric", "devkit"), default=None)
    parser.add_argument("--exp_options", nargs="+", default=[], metavar="KEY=VALUE", help="override experiment attributes")
    parser.add_argument(
        "--checkpoint_every_n_steps", type=positive_int, default=None, help="also save last.ckpt every N steps"
    )
    trainer = parser.add_argument_group("Lightning Trainer options")
    trainer.add_argument(
        "--precision", type=precision_setting, default=None, help=f"one of {', '.join(PRECISIONS)} (GPU only but 32)"
    )
    trainer.add_argument("--limit_train_batches", type=batches_or_fraction, default=None, help="batches (int) or fraction")
    trainer.add_argument("--limit_val_batches", type=batches_or_fraction, default=None, help="batches (int) or fraction")
    trainer.add_argument("--check_val_every_n_epoch", type=positive_int, default=None)
    trainer.add_argument("--log_every_n_steps", type=positive_int, default=10)
    trainer.add_argument("--accumulate_grad_batches", type=positive_int, default=1)
    trainer.add_argument("--no_progress_bar", action="store_true")
    return parser


def accelerator_and_devices(gpus: int | None, devices: int | None) -> tuple[str, int]:
    """(accelerator, devices per node): `gpus` CUDA devices, or `devices` CPU processes when `gpus` is 0/None.

    GPUs asked for on a machine without CUDA, or with the CPU-only build of spconv, are an error, not a run
    on the CPU.
    """
    if gpus:
        if not torch.cuda.is_available():
            raise ValueError(
                f"--gpus {gpus}: torch {torch.__version__} sees no CUDA device; pass --gpus 0 (or leave it out) "
                "to run on the CPU, or install a CUDA build of torch"
            )
        try:
            check_cuda_build()
        except ValueError as error:
            raise ValueError(f"--gpus {gpus}: {error}") from None
        return "gpu", gpus
    return "cpu", devices or 1


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace, exp_class: type, accelerator: str) -> None:
    """Argument errors that need no experiment: each names the argument and what was expected."""
    training = not (args.evaluate or args.predict)
    if not training and not args.ckpt_path and not args.allow_untrained:
        parser.error("-e/-p need --ckpt_path (or --allow_untrained to evaluate random weights)")
    distill = exp_class.distill
    if args.teacher_ckpt and distill is None:
        parser.error(f"--teacher_ckpt is for distillation experiments; {exp_class.__name__} has no teacher")
    if distill is not None and training and not args.teacher_ckpt and not distill.allow_random_teacher:
        parser.error(
            f"{exp_class.__name__} distils from a {distill.teacher_name} teacher: pass --teacher_ckpt with its checkpoint"
        )
    for flag in ("ckpt_path", "teacher_ckpt"):
        path = getattr(args, flag)
        if path and not Path(path).is_file():
            parser.error(f"--{flag} {path} does not exist or is not a file")
    output_root = Path(args.output_root)
    if output_root.exists() and not output_root.is_dir():
        parser.error(f"--output_root {output_root} is a file; expected a folder for the run outputs")
    if accelerator == "cpu" and args.precision is not None and str(args.precision) not in CPU_PRECISIONS:
        parser.error(
            f"--precision {args.precision} needs a GPU: on CPU Lightning turns 16-mixed into bf16, which the CPU "
            "build of spconv does not compute; use --precision 32 on CPU"
        )
    if accelerator == "cpu" and args.sync_batchnorm:
        parser.error("--sync_batchnorm needs GPUs: torch's SyncBatchNorm does not run on CPU tensors")
    if args.predict and exp_class.task != "detection":
        parser.error(f"-p writes a detection submission; {exp_class.__name__} is a {exp_class.task} experiment")
    if args.predict and args.eval_backend:
        parser.error("--eval_backend is for training and -e; -p writes a submission")


def restored_checkpoint(exp: pl.LightningModule, path: str, training: bool) -> str | None:
    """Read --ckpt_path and match it against the experiment before the trainer starts.

    A unikd checkpoint is returned for Lightning to restore. Another framework's checkpoint
    (`unikd.interop`), for -e / -p, is converted and loaded into the model here, and None is returned.
    """
    checkpoint = read_checkpoint(path, "--ckpt_path")
    target = f"{type(exp).__name__} (model_size={exp.model_size})"
    if not is_unikd_checkpoint(checkpoint):
        if training:
            raise CheckpointError(
                f"--ckpt_path {path} is not a unikd checkpoint: training resumes only from unikd checkpoints "
                "(convert another framework's once with tools/convert_checkpoint.py; -e and -p take it as it is)"
            )
        load_detector_checkpoint(exp.model, checkpoint, path, target, "--ckpt_path", experiment_hint)
        return None
    written_by = (checkpoint.get(METADATA_KEY) or {}).get("experiment")
    if training and written_by not in (None, type(exp).__name__):
        raise CheckpointError(
            f"--ckpt_path {path} is {describe_checkpoint(checkpoint)}: training resumes only a checkpoint of its own "
            f"experiment, {type(exp).__name__} (its optimizer and loop state); "
            f"{experiment_hint(checkpoint[METADATA_KEY])} to resume it"
            + (", or pass it as --teacher_ckpt to distil from it" if exp.distill is not None else "")
        )
    check_state_dict(checkpoint["state_dict"], exp.state_dict(), path, target, checkpoint, hint=experiment_hint)
    return path


def run_cli(exp_class: type, argv: list[str] | None = None) -> pl.LightningModule:
    """Parse the command line, check it, build the experiment and run it. Returns the experiment."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        accelerator, devices = accelerator_and_devices(args.gpus, args.devices)
    except ValueError as error:
        parser.error(str(error))
    check_arguments(parser, args, exp_class, accelerator)
    if accelerator == "gpu":
        enable_tf32()
    if args.ckpt_path:  # resolve `latest/...` now: this run may re-point `latest` at itself
        args.ckpt_path = str(Path(args.ckpt_path).resolve())

    pl.seed_everything(args.seed, workers=True)  # the same on every process: one model, one data order
    options = parse_options(args.exp_options)
    for key in ("max_epochs", "version", "eval_backend", "infos", "infos_box_convention"):
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    exp = exp_class(
        batch_size_per_device=args.batch_size,
        data_root=args.data_root,
        seed=args.seed,
        exp_options=options,
        teacher_ckpt=args.teacher_ckpt,
    )
    if args.ckpt_path:
        args.ckpt_path = restored_checkpoint(exp, args.ckpt_path, training=not (args.evaluate or args.predict))

    run_dir = resolve_run_dir(args.output_root, exp_class.__name__, args.run_name)
    exp.output_dir = run_dir
    owner = is_launch_rank_zero()
    lock = RunLock(run_dir)
    if owner:  # the other processes of this run write under its lock
        lock.acquire()
        remove_partial_checkpoints(run_dir / "checkpoints")
        (run_dir / "config.json").write_text(json.dumps({"argv": sys.argv, "args": vars(args)}, indent=2, default=str))
    try:
        run(exp, args, run_dir, accelerator, devices)
    except TrainingInterrupted as stop:
        print(stop, file=sys.stderr)
        raise
    except BaseException:
        if owner:
            lock.release()
            if discard_if_empty(run_dir):
                print(f"run folder {run_dir} removed: the run failed before writing any result", file=sys.stderr)
        raise
    finally:
        if owner:
            lock.release()
    if owner and (args.evaluate or args.predict):
        point_latest(run_dir)
    return exp


def run(exp: pl.LightningModule, args: argparse.Namespace, run_dir: Path, accelerator: str, devices: int) -> None:
    """Build the Trainer and train, evaluate or predict."""
    checkpoint_dir = run_dir / "checkpoints"
    # One name policy: every save of the newest state, by any callback or run (a resumed one included), writes
    # last.ckpt itself (no version counter: never last-v1.ckpt), so last.ckpt is the newest state.
    callbacks = [
        # every epoch, whether or not it validates, so that a crash loses at most one epoch
        ModelCheckpoint(
            dirpath=str(checkpoint_dir),
            save_last=True,
            save_top_k=-1,
            every_n_epochs=1,
            save_on_train_epoch_end=True,
            enable_version_counter=False,
        ),
        LearningRateMonitor(logging_interval="step"),
    ]
    if args.checkpoint_every_n_steps:
        callbacks.append(NewestStepCheckpoint(checkpoint_dir, args.checkpoint_every_n_steps))
    under_slurm = SLURMEnvironment.detect()
    signals = (signal.SIGTERM,) if under_slurm else (signal.SIGTERM, signal.SIGUSR1)  # SLURM: Lightning requeues
    callbacks.append(CheckpointOnSignal(checkpoint_dir, signals))
    callbacks.append(RankSeeding(args.seed))  # model-side draws differ per process (unikd.exps.distributed)
    trainer_kwargs = {
        key: getattr(args, key)
        for key in ("precision", "limit_train_batches", "limit_val_batches", "check_val_every_n_epoch")
        if getattr(args, key) is not None
    }
    world = devices * args.num_nodes
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=devices,
        num_nodes=args.num_nodes,
        strategy=ddp_strategy(world, args.sync_batchnorm),
        sync_batchnorm=args.sync_batchnorm,
        use_distributed_sampler=False,  # the data module shards its own loaders (resumable order)
        max_epochs=exp.max_epochs,
        default_root_dir=str(run_dir),
        logger=[TensorBoardLogger(str(run_dir), name="tensorboard"), CSVLogger(str(run_dir), name="csv")],
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO(on_saved=lambda path: point_latest(run_dir))],
        gradient_clip_val=exp.grad_clip,
        log_every_n_steps=args.log_every_n_steps,
        accumulate_grad_batches=args.accumulate_grad_batches,
        enable_progress_bar=not args.no_progress_bar,
        num_sanity_val_steps=0,
        **trainer_kwargs,
    )
    if args.evaluate:
        trainer.validate(exp, datamodule=exp.datamodule, ckpt_path=args.ckpt_path)
    elif args.predict:
        trainer.predict(exp, datamodule=exp.datamodule, ckpt_path=args.ckpt_path, return_predictions=False)
        if trainer.is_global_zero:
            from unikd.evaluation.submission import write_submission

            path = write_submission(
                exp.predict_records,
                run_dir / "submission.json",
                use_lidar="lidar" in exp.modalities,
                use_camera="camera" in exp.modalities,
            )
            print(f"submission of {len(exp.predict_records)} samples written to {path}")
    else:
        trainer.fit(exp, datamodule=exp.datamodule, ckpt_path=args.ckpt_path)

