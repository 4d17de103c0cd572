"""Learned masks under DDP: two gloo processes train across `mask_learning_until_epoch`, two steps after
it (DDP checks the previous step's reduction at the next forward); the frozen generator stays in DDP's
reduction (zero gradients) and the optimizer leaves it as it is."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

EXP_DIR = Path(__file__).resolve().parents[1] / "exps/nuscenes/BEVFusion"
EXP_FILE = '''
from pathlib import Path

from unikd.exps.cli import run_cli
from unikd.exps.distillation import DistillSettings
from unikd.exps.exp_files import load_exp_class

LiDAR = load_exp_class(Path({exp_dir!r}) / "BEVFusion_nuscenes_centerhead_lidar_exp.py")


class LearnedMaskDDP(LiDAR):
    distill = DistillSettings(
        teacher=LiDAR,
        teacher_preset="small",
        allow_random_teacher=True,
        terms={{"mask": {{"kind": "learned_mask", "source": "neck", "num_queries": 2, "mask_learning_until_epoch": 1}}}},
        weights={{"mask": 1.0}},
    )


if __name__ == "__main__":
    run_cli(LearnedMaskDDP)
'''


@pytest.mark.slow
def test_learned_masks_freeze_under_ddp(synthetic_root: Path, tmp_path: Path) -> None:
    exp_file = tmp_path / "LearnedMaskDDP.py"
    exp_file.write_text(EXP_FILE.format(exp_dir=str(EXP_DIR)))
    command = [
        sys.executable, str(exp_file), "--data_root", str(synthetic_root), "--output_root", str(tmp_path),
        "--devices", "2", "--run_name", "ddp", "--max_epochs", "2", "--limit_train_batches", "2",
        "--limit_val_batches", "0", "--no_progress_bar", "-b", "1",
        "--exp_options", "model_size=small", "num_workers=0", "num_sweeps=1",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("UNIKD_RUN_DIR", "NODE_RANK", "LOCAL_RANK", "RANK")}
    result = subprocess.run(command, cwd=tmp_path, env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True,
                            text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoints = tmp_path / "LearnedMaskDDP" / "ddp" / "checkpoints"
    epoch0, epoch1 = (torch.load(next(checkpoints.glob(f"epoch={e}-*.ckpt")), weights_only=True) for e in (0, 1))
    state0, state1 = epoch0["distiller_state"], epoch1["distiller_state"]
    assert not state0["terms.mask.masks_frozen"] and state1["terms.mask.masks_frozen"]
    # the student trained in epoch 1 while the frozen generator did not move (no momentum, no weight decay)
    assert torch.equal(state0["terms.mask.generator.queries"], state1["terms.mask.generator.queries"])
    first, second = (epoch["state_dict"]["model.head.shared_conv.0.weight"] for epoch in (epoch0, epoch1))
    assert not torch.equal(first, second)
