"""The experiment CLI on bad input: every error comes before training, names the input and leaves
no run folder; whole numbers of --limit_*_batches count batches; -e names outputs after the
checkpoint's epoch; a failed start keeps `latest`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from unikd.exps.checkpoints import CheckpointError
from unikd.exps.cli import batches_or_fraction, run_cli
from unikd.exps.exp_files import load_exp_class

EXP_DIR = Path(__file__).resolve().parents[1] / "exps/nuscenes/BEVFusion"
LIDAR = load_exp_class(EXP_DIR / "BEVFusion_nuscenes_centerhead_lidar_exp.py")
CAMERA_FROM_LIDAR = load_exp_class(EXP_DIR / "BEVFusion_nuscenes_centerhead_camera_exp_distill_lidar.py")
SMALL = ["--exp_options", "model_size=small", "num_workers=0", "num_sweeps=2"]


def argv(root: Path, out: Path, *args: str, options: tuple[str, ...] = ()) -> list[str]:
    return ["--data_root", str(root), "--output_root", str(out), "--no_progress_bar", "-b", "2", *args,
            *SMALL, *options]


def run_folders(out: Path, exp_class: type = LIDAR) -> list[Path]:
    folder = out / exp_class.__name__
    return sorted(p for p in folder.iterdir() if p.name != "latest") if folder.is_dir() else []


def test_limit_batches_whole_numbers_count_batches() -> None:
    assert batches_or_fraction("1") == 1 and isinstance(batches_or_fraction("1"), int)
    assert batches_or_fraction("1.0") == 1.0 and isinstance(batches_or_fraction("1.0"), float)
    assert batches_or_fraction("0.25") == 0.25
    for bad in ("1.5", "-1", "abc"):
        with pytest.raises(Exception, match="expected"):
            batches_or_fraction(bad)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-e", "-p", "--allow_untrained"], "not allowed with argument"),
        (["--precision", "16-mixed"], "needs a GPU"),
        (["--sync_batchnorm"], "does not run on CPU tensors"),
        pytest.param(["--gpus", "8"], "sees no CUDA device; pass --gpus 0",
                     marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without CUDA")),
        (["-b", "0"], "at least 1"),
        (["--limit_train_batches", "2.5"], "fraction in"),
    ],
)
def test_bad_arguments_are_usage_errors(
    synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str], message: str
) -> None:
    with pytest.raises(SystemExit):
        run_cli(LIDAR, argv(synthetic_root, tmp_path, *args))
    assert message in capsys.readouterr().err
    assert not run_folders(tmp_path)


def test_output_root_that_is_a_file(synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "outputs").write_text("not a folder")
    with pytest.raises(SystemExit):
        run_cli(LIDAR, argv(synthetic_root, tmp_path / "outputs"))
    assert "is a file; expected a folder" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        (("lr=abc",), TypeError, r"lr='abc': expected float \(the current value is 0.002\)"),
        (("model_config.head.score_threshold=high",), TypeError, "score_threshold='high': expected float"),
        (("max_epochs=2.5",), TypeError, "max_epochs=2.5: expected int"),
        (("version=v9",), ValueError, "unknown nuScenes version 'v9'"),
        (("eval_backend=fast",), ValueError, "eval_backend must be one of"),
        (("infos_box_convention='0.x'",), ValueError, "pass them with --infos"),
    ],
)
def test_bad_options_fail_before_any_folder_is_made(
    synthetic_root: Path, tmp_path: Path, options: tuple[str, ...], error: type, message: str
) -> None:
    with pytest.raises(error, match=message):
        run_cli(LIDAR, argv(synthetic_root, tmp_path, options=options))
    assert not run_folders(tmp_path)


def test_exp_options_values_are_converted_to_the_replaced_type(synthetic_root: Path) -> None:
    exp = LIDAR(data_root=str(synthetic_root), exp_options={"model_size": "small", "lr": 1, "bev_aug": None})
    assert exp.lr == 1.0 and isinstance(exp.lr, float) and exp.bev_aug is None


def test_distillation_without_a_teacher_checkpoint_fails_at_start(
    synthetic_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit):
        run_cli(CAMERA_FROM_LIDAR, argv(synthetic_root, tmp_path))
    assert "pass --teacher_ckpt" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_cli(CAMERA_FROM_LIDAR, argv(synthetic_root, tmp_path, "--teacher_ckpt", str(tmp_path / "no.ckpt")))
    err = capsys.readouterr().err
    assert "--teacher_ckpt" in err and "no.ckpt does not exist" in err
    assert not run_folders(tmp_path, CAMERA_FROM_LIDAR)


def test_unreadable_checkpoint_is_named_with_its_neighbours(synthetic_root: Path, tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    text = folder / "last.ckpt"
    text.write_text("epoch=3\n")
    exp = LIDAR(exp_options={"model_size": "small"})
    torch.save({"state_dict": exp.state_dict()}, folder / "epoch=2-step=10.ckpt")
    with pytest.raises(CheckpointError, match=r"last.ckpt \(8 bytes\) could not be read.*epoch=2-step=10.ckpt"):
        run_cli(LIDAR, argv(synthetic_root, tmp_path, "-e", "--ckpt_path", str(text)))
    assert not run_folders(tmp_path)


def test_checkpoint_of_another_size_says_which_flags_load_it(synthetic_root: Path, tmp_path: Path) -> None:
    other = LIDAR(exp_options={"model_size": "student"})
    checkpoint = {"state_dict": other.state_dict()}
    other.on_save_checkpoint(checkpoint)
    path = tmp_path / "student.ckpt"
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError) as error:
        run_cli(LIDAR, argv(synthetic_root, tmp_path, "-e", "--ckpt_path", str(path)))
    message = str(error.value)
    assert len(message.splitlines()) < 12 and "model.head: " in message
    assert "use BEVFusion_nuscenes_centerhead_lidar_exp.py --exp_options model_size=student" in message


@pytest.mark.slow
def test_failed_start_keeps_latest_and_evaluation_names_the_checkpoint_epoch(
    synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # two epochs of one batch each: --limit_train_batches 1 is one batch, not the whole epoch
    exp = run_cli(LIDAR, argv(synthetic_root, tmp_path, "--max_epochs", "2", "--limit_train_batches", "1",
                              "--limit_val_batches", "0"))
    latest = tmp_path / LIDAR.__name__ / "latest"
    assert latest.resolve() == exp.output_dir.resolve()
    last = latest / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["global_step"] == 2 and checkpoint["epoch"] == 1

    def broken_setup(self, stage: str) -> None:
        raise RuntimeError("the data went away")

    with monkeypatch.context() as patch:
        patch.setattr(LIDAR, "setup", broken_setup)
        with pytest.raises(RuntimeError, match="the data went away"):
            run_cli(LIDAR, argv(synthetic_root, tmp_path, "--ckpt_path", str(last), "--max_epochs", "3"))
    assert latest.resolve() == exp.output_dir.resolve()  # the README's resume command still works
    assert run_folders(tmp_path) == [exp.output_dir]  # and the failed run left no folder

    evaluated = run_cli(LIDAR, argv(synthetic_root, tmp_path, "-e", "--ckpt_path", str(last),
                                    "--limit_val_batches", "1"))
    summary = evaluated.output_dir / "eval" / "metrics_summary_epoch1.json"
    assert json.loads(summary.read_text())["meta"]["split"] == "mini_val"
    assert not list((evaluated.output_dir / "eval").glob("*epoch0*"))
    assert latest.resolve() == evaluated.output_dir.resolve()


def test_a_truncated_validation_file_stops_training_before_the_first_step(
    synthetic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both splits are opened (and checked) when training starts, not when the first validation reaches them."""
    from test_dataset import linked_copy, replace_file

    root = linked_copy(synthetic_root, tmp_path / "nuscenes")
    exp = LIDAR(data_root=str(root), exp_options={"model_size": "small"})
    broken = root / exp.datamodule.val_dataset().infos[0]["lidar_path"]
    replace_file(broken, broken.read_bytes()[:-3])

    steps = []
    monkeypatch.setattr(LIDAR, "training_step", lambda self, batch, index: steps.append(index))
    with pytest.raises(OSError, match="truncated"):
        run_cli(LIDAR, argv(root, tmp_path / "out", "--max_epochs", "1"))
    assert steps == [] and not run_folders(tmp_path / "out")
