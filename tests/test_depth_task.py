"""Depth pretraining as a task and an objective: `EVALUATION_TASKS["depth"]` scores hand-built depth probabilities,
the experiment trains `DepthObjective` and validates through the CLI, and what the task cannot do is refused."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from unikd.exps.cli import run_cli
from unikd.exps.depth_pretrain_exp import CameraDepthPretrainExp
from unikd.exps.exp_files import load_exp_class
from unikd.exps.objective import DepthObjective
from unikd.exps.tasks import EVALUATION_TASKS

EXP_FILE = Path(__file__).resolve().parents[1] / "exps/nuscenes/BEVFusion/BEVFusion_nuscenes_camera_depth_pretrain_exp.py"
SMALL = ["--exp_options", "model_size=small", "num_workers=0"]
D = 5  # depth bins of the hand-built batches


def hand_built(cells: dict[tuple[int, int, int], tuple[int, list[float]]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities [1, 2, D, 2, 3] (uniform where no cell is given) and targets [1, 2, 2, 3] (-1: no LiDAR hit)
    with `cells[(camera, row, column)] = (target bin, probabilities of the D bins)`."""
    probs = torch.full((1, 2, D, 2, 3), 1.0 / D)
    targets = torch.full((1, 2, 2, 3), -1, dtype=torch.int64)
    for (n, i, j), (target, p) in cells.items():
        probs[0, n, :, i, j] = torch.tensor(p)
        targets[0, n, i, j] = target
    return probs, targets


class FakeExp:
    """What the task reads of its experiment: a model that gives each batch's probabilities and targets, the
    device, the trainer's rank, and `log`."""

    device = torch.device("cpu")
    trainer = SimpleNamespace(is_global_zero=True)

    def __init__(self) -> None:
        self.model = SimpleNamespace(depth_probs_and_targets=lambda batch: batch)
        self.logged: dict[str, float] = {}

    def log(self, name: str, value: float, rank_zero_only: bool) -> None:
        assert rank_zero_only
        self.logged[name] = value


def bce(target: int, p: list[float]) -> float:
    """Binary cross-entropy of one cell summed over its bins, against the one-hot `target`."""
    return -sum(math.log(q) if d == target else math.log(1 - q) for d, q in enumerate(p))


def test_depth_validation_scores_hand_built_cells(capsys: pytest.CaptureFixture) -> None:
    first = {  # argmax 2 on 2: exact; 3 on 4 and 0 on 1: within one; 3 on 0: neither
        (0, 0, 1): (2, [0.1, 0.2, 0.5, 0.1, 0.1]),
        (1, 1, 2): (4, [0.05, 0.05, 0.1, 0.6, 0.2]),
        (0, 1, 0): (1, [0.4, 0.3, 0.1, 0.1, 0.1]),
        (1, 0, 0): (0, [0.1, 0.1, 0.2, 0.5, 0.1]),
    }
    second = {(1, 0, 2): (3, [0.1, 0.1, 0.1, 0.6, 0.1])}  # exact
    exp = FakeExp()
    task = EVALUATION_TASKS["depth"](exp)
    assert not task.reads_map_masks
    task.on_validation_epoch_start()
    for index, cells in enumerate((first, second, {})):  # the empty batch has no LiDAR-hit cell: nothing counted
        task.validation_step(hand_built(cells), index)
    every = [*first.values(), *second.values()]
    expected_loss = sum(bce(target, p) for target, p in every) / 5
    assert task.sums.tolist() == pytest.approx([expected_loss * 5, 5, 2, 4], rel=1e-5)
    task.on_validation_epoch_end()
    expected = {"depth_loss": expected_loss, "depth_bin_acc": 2 / 5, "depth_bin_acc1": 4 / 5}
    assert exp.logged == pytest.approx({f"val/{name}": value for name, value in expected.items()}, rel=1e-5)
    assert exp.last_metrics == pytest.approx(expected, rel=1e-5)
    assert capsys.readouterr().out == f"depth: depth_loss {expected_loss:.4f}, depth_bin_acc 0.4000, depth_bin_acc1 0.8000\n"
    task.on_validation_epoch_start()  # a new epoch counts from zero
    assert task.sums.tolist() == [0, 0, 0, 0]


def test_the_depth_experiment_states_only_its_settings(synthetic_root: Path) -> None:
    exp = CameraDepthPretrainExp(data_root=str(synthetic_root), exp_options={"model_size": "small"})
    assert exp.task == "depth" and type(exp.evaluation) is EVALUATION_TASKS["depth"]
    assert type(exp.objective) is DepthObjective
    assert "head" not in exp.model_config and "seg_head" not in exp.model_config
    assert all(key.startswith("model.camera.") for key in exp.state_dict())
    with pytest.raises(ValueError, match="eval_backend 'devkit' evaluates detection; depth pretraining uses 'metric'"):
        CameraDepthPretrainExp(exp_options={"model_size": "small", "eval_backend": "devkit"})


def test_predict_of_a_depth_pretraining_is_refused_by_the_command_line(synthetic_root: Path, tmp_path: Path) -> None:
    command = [sys.executable, str(EXP_FILE), "-p", "--allow_untrained", "--data_root", str(synthetic_root),
               "--output_root", str(tmp_path), "--no_progress_bar", "-b", "1", *SMALL]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert ("-p writes a detection submission; BEVFusion_nuscenes_camera_depth_pretrain_exp is a depth experiment"
            in done.stderr)
    assert not (tmp_path / EXP_FILE.stem).exists()


def test_depth_pretraining_trains_and_validates_through_the_cli(synthetic_root: Path, tmp_path: Path) -> None:
    argv = ["--data_root", str(synthetic_root), "--output_root", str(tmp_path), "--no_progress_bar", "-b", "1",
            "--max_epochs", "1", "--limit_train_batches", "1", "--limit_val_batches", "1", "--log_every_n_steps", "1",
            *SMALL]
    exp = run_cli(load_exp_class(EXP_FILE), argv)
    header = (exp.output_dir / "csv/version_0/metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/depth", "train/loss", "val/depth_loss", "val/depth_bin_acc", "val/depth_bin_acc1"} <= set(header)
    assert set(exp.last_metrics) == {"depth_loss", "depth_bin_acc", "depth_bin_acc1"}
    assert 0 <= exp.last_metrics["depth_bin_acc"] <= exp.last_metrics["depth_bin_acc1"] <= 1
    checkpoint = torch.load(exp.output_dir / "checkpoints/last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 1
    assert set(checkpoint["state_dict"]) == set(exp.state_dict())


def test_depth_task_on_a_detector_experiment_names_the_depth_pretraining(synthetic_root: Path, tmp_path: Path) -> None:
    detector_file = EXP_FILE.with_name("BEVFusion_nuscenes_centerhead_camera_exp.py")
    command = [sys.executable, str(detector_file), "--data_root", str(synthetic_root), "--output_root", str(tmp_path),
               "--no_progress_bar", "-b", "1", "--exp_options", "model_size=small", "task=depth"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "task 'depth' has neither: depth pretraining builds a camera branch alone" in done.stderr
    assert "BEVFusion_nuscenes_camera_depth_pretrain_exp.py" in done.stderr
    assert not any(tmp_path.rglob("*.ckpt"))
