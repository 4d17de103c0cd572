"""Nothing saved is lost: atomic checkpoints, a clear error on a broken last.ckpt, save-and-stop on SIGTERM,
and a resumed run that replays exactly the batches of an uninterrupted one."""

from __future__ import annotations

import errno
import multiprocessing
import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from unikd.data.samplers import EpochShuffleSampler
from unikd.exps import checkpoints
from unikd.exps.checkpoints import AtomicCheckpointIO, CheckpointError
from unikd.exps.cli import run_cli
from unikd.exps.exp_files import load_exp_class
from unikd.exps.interrupt import TrainingInterrupted

EXP_DIR = Path(__file__).resolve().parents[1] / "exps/nuscenes/BEVFusion"
LIDAR = load_exp_class(EXP_DIR / "BEVFusion_nuscenes_centerhead_lidar_exp.py")


def test_sampler_order_depends_only_on_seed_epoch_and_rank() -> None:
    sampler = EpochShuffleSampler(10, seed=3, batch_size=2, rank=1, world_size=3)
    assert len(sampler) == 4 and list(sampler) == sampler.shard(0)
    shards = [EpochShuffleSampler(10, 3, 2, rank, 3).shard(0) for rank in range(3)]
    assert set(sum(shards, [])) == set(range(10)) and sum(len(s) for s in shards) == 12
    sampler.set_epoch(1)
    assert list(sampler) != sampler.shard(0)
    sampler.resume(1, 1)  # one batch of epoch 1 done: the pass starts at its second batch, once
    assert list(sampler) == sampler.shard(1)[2:]
    assert list(sampler) == sampler.shard(1)


def test_atomic_save_never_leaves_a_partial_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "checkpoints" / "last.ckpt"
    saved = []
    io = AtomicCheckpointIO(on_saved=saved.append)
    io.save_checkpoint({"step": torch.tensor(1)}, path)
    assert saved == [path] and torch.load(path)["step"] == 1
    mask = os.umask(0o022)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask  # readable like any file the user writes

    def disk_full(obj, f) -> None:
        f.write(b"x" * 1000)  # part of the file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoints.torch, "save", disk_full)
    with pytest.raises(CheckpointError, match="disk full"):
        io.save_checkpoint({"step": torch.tensor(2)}, path)
    monkeypatch.undo()
    assert torch.load(path)["step"] == 1  # the previous checkpoint is intact under its name
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # no partial file left
    assert saved == [path]


def test_resuming_from_a_truncated_last_checkpoint_names_the_earlier_ones(synthetic_root: Path, tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    exp = LIDAR(exp_options={"model_size": "small"})
    good = {"state_dict": exp.state_dict()}
    AtomicCheckpointIO().save_checkpoint(good, folder / "epoch=0-step=4.ckpt")
    data = (folder / "epoch=0-step=4.ckpt").read_bytes()
    (folder / "last.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"could not be read.*truncated.*epoch=0-step=4.ckpt"):
        run_cli(LIDAR, ["--data_root", str(synthetic_root), "--output_root", str(tmp_path / "out"),
                        "--ckpt_path", str(folder / "last.ckpt"), "--exp_options", "model_size=small"])


class Recording(LIDAR):
    """The LiDAR experiment with a trivial loss that records the samples of each training step, and
    sends SIGTERM to its data-loading workers at `kill_at_step` and to itself one step later."""

    seen: list[list[str]] = []
    kill_at_step: int | None = None

    def training_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        Recording.seen.append(list(batch["sample_token"]))
        kill_at = Recording.kill_at_step
        if self.global_step == kill_at:  # as a cluster does: every process of the job, not all at once
            workers = [str(worker.pid) for worker in multiprocessing.active_children()]
            subprocess.run(["kill", "-TERM", *workers], check=True)  # from another process, as a cluster's
        if kill_at is not None and self.global_step == kill_at + 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return {"zero": sum(p.sum() for p in self.model.head.parameters()) * 0.0}


def recording_run(root: Path, out: Path, *args: str) -> Recording:
    return run_cli(Recording, ["--data_root", str(root), "--output_root", str(out), "--no_progress_bar", "-b", "8",
                               "--max_epochs", "2", "--limit_val_batches", "0", *args,
                               "--exp_options", "model_size=small", "num_workers=1", "num_sweeps=1"])


@pytest.mark.slow
def test_sigterm_saves_and_resume_replays_the_uninterrupted_batches(synthetic_root: Path, tmp_path: Path) -> None:
    Recording.seen, Recording.kill_at_step = [], None
    recording_run(synthetic_root, tmp_path / "whole")
    uninterrupted = Recording.seen
    assert len(uninterrupted) == 16 and uninterrupted[:8] != uninterrupted[8:]  # 64 samples, 2 epochs

    Recording.seen, Recording.kill_at_step = [], 2  # early: the workers have batches left to make
    with pytest.raises(TrainingInterrupted) as stop:
        recording_run(synthetic_root, tmp_path / "cut", "--checkpoint_every_n_steps", "2")
    assert stop.value.code == 128 + signal.SIGTERM and stop.value.step == 4
    assert "resume with --ckpt_path" in str(stop.value)
    checkpoint = torch.load(stop.value.checkpoint, weights_only=True)
    assert checkpoint["global_step"] == 4 and checkpoint["epoch"] == 0
    step_checkpoints = sorted(p.name for p in stop.value.checkpoint.parent.glob("step=*.ckpt"))
    assert step_checkpoints == ["step=2.ckpt"]  # every 2 steps

    Recording.kill_at_step = None
    recording_run(synthetic_root, tmp_path / "cut", "--ckpt_path", str(stop.value.checkpoint))
    assert Recording.seen == uninterrupted
