"""The experiment CLI end to end: train, log, checkpoint, resume, evaluate, DDP, bad input."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from unikd.evaluation import flatten_summary
from unikd.exps.cli import run_cli

REPO = Path(__file__).resolve().parents[1]
LIDAR_EXP = REPO / "exps/nuscenes/BEVFusion/BEVFusion_nuscenes_centerhead_lidar_exp.py"
SMALL = ["--exp_options", "model_size=small", "num_workers=0", "num_sweeps=2"]


def load_exp_class(path: Path) -> type:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, path.stem)


def cli(root: Path, out: Path, *args: str) -> object:
    argv = ["--data_root", str(root), "--output_root", str(out), "--no_progress_bar", "-b", "2", *args, *SMALL]
    return run_cli(load_exp_class(LIDAR_EXP), argv)


@pytest.mark.slow
def test_train_resume_and_evaluate(synthetic_root: Path, tmp_path: Path) -> None:
    # no validation in this run: the epoch's checkpoint must be written all the same
    exp = cli(synthetic_root, tmp_path, "--max_epochs", "1", "--limit_train_batches", "2", "--log_every_n_steps", "1",
              "--check_val_every_n_epoch", "3")
    run = tmp_path / LIDAR_EXP.stem / "latest"
    assert run.resolve() == exp.output_dir.resolve()
    last = run / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == 2
    assert "train/loss" in (run / "csv/version_0/metrics.csv").read_text().splitlines()[0]
    assert list((run / "tensorboard").rglob("events.out.tfevents.*"))

    resumed = cli(synthetic_root, tmp_path, "--max_epochs", "2", "--limit_train_batches", "2", "--ckpt_path", str(last))
    assert torch.load(resumed.output_dir / "checkpoints/last.ckpt", weights_only=False)["global_step"] == 4
    assert list((resumed.output_dir / "vis").glob("*.png"))
    summary = json.loads((resumed.output_dir / "eval/metrics_summary_epoch1.json").read_text())
    assert {"mean_ap", "nd_score", "label_aps", "tp_errors"} <= set(summary)

    checkpoint = str(resumed.output_dir / "checkpoints/last.ckpt")
    fast = cli(synthetic_root, tmp_path, "-e", "--ckpt_path", checkpoint)
    official = cli(synthetic_root, tmp_path, "-e", "--ckpt_path", checkpoint, "--eval_backend", "devkit")
    ours, theirs = flatten_summary(fast.last_metrics), flatten_summary(official.last_metrics)
    assert set(ours) == set(theirs)
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value, abs=1e-6, nan_ok=True), key


def test_bad_command_lines_are_errors(synthetic_root: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        cli(synthetic_root, tmp_path, "-e")  # no checkpoint
    with pytest.raises(SystemExit):
        cli(synthetic_root, tmp_path, "-e", "--ckpt_path", str(tmp_path / "missing.ckpt"))
    with pytest.raises(AttributeError, match="no attribute 'learning_rate'"):
        run_cli(load_exp_class(LIDAR_EXP), ["--data_root", str(synthetic_root), "--output_root", str(tmp_path),
                                            "--exp_options", "learning_rate=1"])
    with pytest.raises(KeyError, match="no key 'score_thresh'"):
        run_cli(load_exp_class(LIDAR_EXP), ["--data_root", str(synthetic_root), "--output_root", str(tmp_path),
                                            "--exp_options", "model_size=small", "model_config.head.score_thresh=0.3"])


def test_exp_options_reach_the_model(synthetic_root: Path) -> None:
    exp_class = load_exp_class(LIDAR_EXP)
    exp = exp_class(data_root=str(synthetic_root), exp_options={"model_size": "small", "lr": 5e-4,
                                                               "model_config.head.score_threshold": 0.3})
    assert exp.lr == 5e-4
    assert exp.model.head.score_threshold == 0.3
    assert exp.model.grid.width == 64  # the small size, chosen before the model was built


def test_wrong_checkpoint_is_an_error(synthetic_root: Path, tmp_path: Path) -> None:
    exp_class = load_exp_class(LIDAR_EXP)
    exp = exp_class(data_root=str(synthetic_root), exp_options={"model_size": "small"})
    state = exp.state_dict()
    state.pop("model.head.shared_conv.0.weight")
    path = tmp_path / "broken.ckpt"
    torch.save({"state_dict": state, "pytorch-lightning_version": "2.6.6"}, path)
    with pytest.raises(RuntimeError, match="model.head.shared_conv.0.weight"):
        cli(synthetic_root, tmp_path, "-e", "--ckpt_path", str(path))


def test_non_finite_loss_stops_training_with_its_name(synthetic_root: Path, tmp_path: Path) -> None:
    exp = load_exp_class(LIDAR_EXP)(data_root=str(synthetic_root), exp_options={"model_size": "small"})
    exp.trainer = pl.Trainer(accelerator="cpu", default_root_dir=str(tmp_path), logger=False)  # its precision: 32
    exp.training_losses = lambda batch: {"heatmap_task0": torch.tensor(1.0), "bbox_task2": torch.tensor(float("nan"))}
    batch = {"sample_token": ["abc"]}
    with pytest.raises(FloatingPointError, match="bbox_task2=nan"):
        exp.training_step(batch, 0)


@pytest.mark.slow
def test_two_process_ddp_trains_and_evaluates_every_sample(synthetic_root: Path, tmp_path: Path) -> None:
    """gloo DDP on CPU; the metric needs every val sample, so both ranks' predictions must be gathered."""
    command = [sys.executable, str(LIDAR_EXP), "--data_root", str(synthetic_root), "--output_root", str(tmp_path),
               "--devices", "2", "--max_epochs", "1", "--limit_train_batches", "2", "--no_progress_bar", "-b", "1", *SMALL]
    env = {key: value for key, value in os.environ.items() if key != "UNIKD_RUN_DIR"}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / LIDAR_EXP.stem / "latest"
    summary = json.loads((run / "eval/metrics_summary_epoch0.json").read_text())
    assert summary["meta"]["backend"] == "metric"
    assert torch.load(run / "checkpoints/last.ckpt", weights_only=False)["global_step"] == 2
