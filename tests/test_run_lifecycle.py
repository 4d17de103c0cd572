"""The run lifecycle: a failed or stopped job exits (never hangs on its data-loading workers), last.ckpt is the
newest state, a diverged run keeps its last finite checkpoint, one run per run folder, a full disk and
another experiment's checkpoint are named as such."""

from __future__ import annotations

import dataclasses
import errno
import json
import multiprocessing
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from unikd.data.loader_workers import stop_signal_shield
from unikd.exps import checkpoints
from unikd.exps.checkpoints import AtomicCheckpointIO, CheckpointError
from unikd.exps.cli import run_cli
from unikd.exps.exp_files import load_exp_class
from unikd.exps.finite_guard import FiniteLossGuard, NonFiniteLoss
from unikd.exps.interrupt import TrainingInterrupted
from unikd.exps.run_lock import LOCK_NAME, RunFolderLocked

ROOT = Path(__file__).resolve().parents[1]
LIFECYCLE_EXP = ROOT / "tests/fixtures/lifecycle_exp.py"
LIDAR = load_exp_class(ROOT / "exps/nuscenes/BEVFusion/BEVFusion_nuscenes_centerhead_lidar_exp.py")
LIDAR_FROM_CAMERA = load_exp_class(ROOT / "exps/nuscenes/BEVFusion/BEVFusion_nuscenes_centerhead_lidar_exp_distill_camera.py")
SMALL = ["--no_progress_bar", "-b", "1", "--max_epochs", "1", "--limit_val_batches", "0"]
OPTIONS = ["--exp_options", "model_size=small", "num_workers=0", "num_sweeps=1"]


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("UNIKD_RUN_DIR", "NODE_RANK", "LOCAL_RANK", "RANK")}
    return {**env, "OMP_NUM_THREADS": "1"}


def checkpoint_step(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=True)["global_step"]


def folder_names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ------------------------------------------------------------------------------------------- no hang
class Numbers(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 1000

    def __getitem__(self, index: int) -> int:
        return index


def test_a_worker_ignores_anothers_sigterm_and_ends_on_its_loaders() -> None:
    iterator = iter(DataLoader(Numbers(), num_workers=1, worker_init_fn=stop_signal_shield()))
    next(iterator)
    (worker,) = multiprocessing.active_children()
    subprocess.run(["kill", "-TERM", str(worker.pid)], check=True)  # a job-wide signal: another sender
    time.sleep(0.5)
    assert worker.is_alive() and next(iterator).item() == 1  # the loader goes on
    worker.terminate()  # what Python does to daemonic workers at exit, before joining them
    worker.join(timeout=10)
    assert worker.exitcode == 0  # ended at once; a worker that ignored this made the exit hang for ever
    del iterator


@pytest.mark.parametrize("failure", ["worker", "validation", "sigterm_validation"])
def test_a_job_exits_within_seconds_of_its_failure(synthetic_root: Path, tmp_path: Path, failure: str) -> None:
    command = [sys.executable, str(LIFECYCLE_EXP), "--data_root", str(synthetic_root), "--output_root", str(tmp_path),
               "--no_progress_bar", "-b", "1", "--max_epochs", "1", "--limit_train_batches", "2",
               "--limit_val_batches", "2", "--run_name", "run", "--exp_options", "model_size=small",
               "num_workers=2", "num_sweeps=1", f"failure={failure}"]
    result = subprocess.run(command, env=child_env(), capture_output=True, text=True, timeout=120)
    ended = time.time()
    failed_at = float(re.search(r"FAILURE_AT (\S+)", result.stderr).group(1))
    assert ended - failed_at < 30, result.stderr[-2000:]
    if failure == "sigterm_validation":  # saved at the end of its batch, as before
        assert result.returncode == 128 + signal.SIGTERM, result.stderr[-2000:]
        assert "SIGTERM received: stopped at epoch 0 step 2 and saved" in result.stderr
        assert checkpoint_step(tmp_path / "LifecycleExp/run/checkpoints/last.ckpt") == 2
    else:
        assert result.returncode == 1 and "(on purpose)" in result.stderr


# ------------------------------------------------------------------------------------------- last.ckpt
def test_last_checkpoint_holds_the_final_step(synthetic_root: Path, tmp_path: Path) -> None:
    run_cli(LIDAR, ["--data_root", str(synthetic_root), "--output_root", str(tmp_path), *SMALL, "--run_name", "run",
                    "--checkpoint_every_n_steps", "3", "--limit_train_batches", "5", *OPTIONS])
    folder = tmp_path / LIDAR.__name__ / "run/checkpoints"
    assert folder_names(folder) == ["epoch=0-step=5.ckpt", "last.ckpt", "step=3.ckpt"]  # no last-v1.ckpt
    assert checkpoint_step(folder / "last.ckpt") == 5


class StopsAtStep2(LIDAR):
    """SIGTERM from another process, as a cluster sends it, during step 2 (the third) of a run that starts at 0."""

    def training_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        if self.global_step == 2 and self.trainer.ckpt_path is None:
            subprocess.run(["kill", "-TERM", str(os.getpid())], check=True)
        return super().training_losses(batch)


def test_a_resumed_run_writes_the_same_last_checkpoint(synthetic_root: Path, tmp_path: Path) -> None:
    args = ["--data_root", str(synthetic_root), "--output_root", str(tmp_path), *SMALL, "--run_name", "run",
            "--checkpoint_every_n_steps", "1", "--limit_train_batches", "4", *OPTIONS]
    with pytest.raises(TrainingInterrupted) as stop:
        run_cli(StopsAtStep2, args)
    folder = tmp_path / StopsAtStep2.__name__ / "run/checkpoints"
    assert stop.value.checkpoint == folder / "last.ckpt" and checkpoint_step(folder / "last.ckpt") == 3
    partial = folder / ".last.ckpt.abc123.partial"  # what a save killed with SIGKILL leaves
    partial.write_bytes(b"half a checkpoint")

    run_cli(StopsAtStep2, [*args, "--ckpt_path", str(folder / "last.ckpt")])
    assert folder_names(folder) == ["epoch=0-step=4.ckpt", "last.ckpt", "step=4.ckpt"]  # one step file, no -v1
    assert checkpoint_step(folder / "last.ckpt") == 4


# ------------------------------------------------------------------------------------------- non-finite
def test_divergence_keeps_the_last_finite_checkpoint(synthetic_root: Path, tmp_path: Path) -> None:
    with pytest.raises(FloatingPointError) as error:
        run_cli(LIDAR, ["--data_root", str(synthetic_root), "--output_root", str(tmp_path), *SMALL, "--run_name", "run",
                        "--checkpoint_every_n_steps", "1", "--limit_train_batches", "8",
                        "--exp_options", "model_size=small", "num_workers=0", "num_sweeps=1", "lr=1e6"])
    run = tmp_path / LIDAR.__name__ / "run"
    message = str(error.value)
    step = int(re.search(r"step (\d+)", message).group(1))
    assert "non-finite" in message and f"--ckpt_path {run / 'checkpoints/last.ckpt'}" in message
    last = torch.load(run / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())
    assert 1 <= last["global_step"] < step + 1 and (run / f"checkpoints/step={last['global_step']}.ckpt").is_file()
    assert (tmp_path / LIDAR.__name__ / "latest").resolve() == run.resolve()


def test_the_guard_skips_mixed_precision_steps_and_stops_after_too_many() -> None:
    finite, nan = {"heatmap": torch.tensor(1.0), "bbox": torch.tensor(2.0)}, {"heatmap": torch.tensor(1.0), "bbox": torch.tensor(float("nan"))}
    guard = FiniteLossGuard(mixed_precision=True, max_consecutive=3)
    assert guard.check(finite, "at step 0", None)
    for in_a_row in (1, 2):
        with pytest.warns(RuntimeWarning, match=rf"non-finite loss at step 1: bbox=nan; .* \({in_a_row} in a row"):
            assert not guard.check(nan, "at step 1", None)
    assert guard.check(finite, "at step 3", None) and guard.consecutive == 0  # a finite step resets the count
    for _ in range(2):
        with pytest.warns(RuntimeWarning):
            guard.check(nan, "at step 4", None)
    with pytest.raises(NonFiniteLoss, match=r"at step 6 \(3 steps in a row\): bbox=nan; .*--ckpt_path /x/last.ckpt"):
        guard.check(nan, "at step 6", Path("/x/last.ckpt"))
    assert guard.skipped == 4

    full = FiniteLossGuard(mixed_precision=False, max_consecutive=3)
    with pytest.raises(NonFiniteLoss, match="non-finite loss at step 0: bbox=nan; .*no checkpoint was saved"):
        full.check(nan, "at step 0", None)


# ------------------------------------------------------------------------------------------- run lock
def test_a_second_run_in_the_same_folder_is_refused(synthetic_root: Path, tmp_path: Path) -> None:
    common = ["--data_root", str(synthetic_root), "--output_root", str(tmp_path), *SMALL, "--run_name", "same"]
    first = subprocess.Popen([sys.executable, str(LIFECYCLE_EXP), *common, "--seed", "1", "--limit_train_batches", "1",
                              *OPTIONS, "failure=hold"], env=child_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    lock = tmp_path / "LifecycleExp/same" / LOCK_NAME
    deadline = time.time() + 60
    while not lock.is_file() and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    second = subprocess.run([sys.executable, str(LIFECYCLE_EXP), *common, "--seed", "2", *OPTIONS],
                            env=child_env(), capture_output=True, text=True, timeout=120)
    (lock.parent / "release").touch()
    output = first.communicate(timeout=120)[0]
    assert first.returncode == 0, output[-2000:]
    assert second.returncode == 1
    assert f"run folder {lock.parent} is in use by another run: process {first.pid}" in second.stderr
    config = json.loads((lock.parent / "config.json").read_text())
    assert config["args"]["seed"] == 1 and not lock.exists()  # the first run's folder; its lock released


def test_a_stale_lock_of_a_dead_process_is_taken_over(synthetic_root: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    folder = tmp_path / LIDAR.__name__ / "run"
    folder.mkdir(parents=True)
    (folder / LOCK_NAME).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    with pytest.raises(RunFolderLocked, match=f"in use by another run: process {os.getpid()}"):  # a live holder
        run_cli(LIDAR, ["--data_root", str(synthetic_root), "--output_root", str(tmp_path), *SMALL, "--run_name", "run",
                        *OPTIONS])
    (folder / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    run_cli(LIDAR, ["--data_root", str(synthetic_root), "--output_root", str(tmp_path), *SMALL, "--run_name", "run",
                    "--limit_train_batches", "1", *OPTIONS])
    assert f"taking over the lock {folder / LOCK_NAME} of process {dead.pid}" in capsys.readouterr().err
    assert (folder / "checkpoints/last.ckpt").is_file() and not (folder / LOCK_NAME).exists()


# ------------------------------------------------------------------------------------------- named failures
def test_a_full_disk_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def disk_full(obj, f) -> None:
        f.write(b"x" * 1000)
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as cause:  # how torch reports it
            raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0") from cause

    monkeypatch.setattr(checkpoints.torch, "save", disk_full)
    folder = tmp_path / "checkpoints"
    with pytest.raises(CheckpointError, match=rf"disk full: could not write checkpoint last.ckpt in {folder} "):
        AtomicCheckpointIO().save_checkpoint({"state_dict": {}}, folder / "last.ckpt")
    assert folder_names(folder) == []


class RandomTeacher(LIDAR_FROM_CAMERA):
    distill = dataclasses.replace(LIDAR_FROM_CAMERA.distill, allow_random_teacher=True)


def test_training_refuses_another_experiments_checkpoint(synthetic_root: Path, tmp_path: Path) -> None:
    plain = LIDAR(exp_options={"model_size": "small"})
    path = tmp_path / "plain.ckpt"
    torch.save({"state_dict": plain.state_dict(), checkpoints.METADATA_KEY: checkpoints.checkpoint_metadata(plain)}, path)
    with pytest.raises(CheckpointError, match=rf"--ckpt_path {path} is a {LIDAR.__name__} checkpoint .*training resumes "
                                              rf"only a checkpoint of its own experiment, RandomTeacher.*--teacher_ckpt"):
        run_cli(RandomTeacher, ["--data_root", str(synthetic_root), "--output_root", str(tmp_path / "out"), *SMALL,
                                "--ckpt_path", str(path), *OPTIONS, "teacher_model_size=small"])
    assert not (tmp_path / "out" / RandomTeacher.__name__).exists() or not any((tmp_path / "out").rglob("*.ckpt"))
