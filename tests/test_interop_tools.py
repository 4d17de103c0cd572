"""Checkpoints of other frameworks through the tools and the CLI: export a unikd CenterPoint-sized detector
to mmdet3d, convert it back, evaluate it as it is with -e, and distil a camera student from it."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from unikd.exps.checkpoints import METADATA_KEY, CheckpointError, checkpoint_metadata
from unikd.exps.cli import run_cli
from unikd.exps.exp_files import load_exp_class

REPO = Path(__file__).resolve().parents[1]
EXP_DIR = REPO / "exps/nuscenes/BEVFusion"


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(f"unikd_tool_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


convert = load_tool("convert_checkpoint").convert
export_centerpoint = load_tool("export_checkpoint").export_centerpoint
LIDAR = load_exp_class(EXP_DIR / "BEVFusion_nuscenes_centerhead_lidar_exp.py")
CAMERA_FROM_CENTERPOINT = load_exp_class(EXP_DIR / "BEVFusion_nuscenes_centerhead_camera_exp_distill_centerpoint.py")


@pytest.fixture(scope="module")
def unikd_centerpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A unikd checkpoint of a randomly initialised CenterPoint-0.1-sized LiDAR detector."""
    torch.manual_seed(0)
    exp = LIDAR(exp_options={"model_size": "centerpoint_01"})
    checkpoint = {"state_dict": exp.state_dict(), "pytorch-lightning_version": "2.6.6",
                  METADATA_KEY: checkpoint_metadata(exp)}
    path = tmp_path_factory.mktemp("centerpoint") / "unikd.ckpt"
    torch.save(checkpoint, path)
    return path, exp.state_dict()


def test_export_then_convert_gives_back_the_same_weights(unikd_centerpoint: tuple[Path, dict], tmp_path: Path) -> None:
    source, weights = unikd_centerpoint
    exported = tmp_path / "centerpoint.pth"
    assert export_centerpoint(source, exported).startswith("centerpoint_voxel01_")
    mmdet3d = torch.load(exported, weights_only=True)
    assert all(key.startswith("pts_") for key in mmdet3d["state_dict"]) and mmdet3d["meta"]["box_convention"] == "1.x"
    back = tmp_path / "back.ckpt"
    assert convert(exported, back, None, None, trusted=False) == "centerpoint_01"
    restored = torch.load(back, weights_only=True)["state_dict"]
    assert set(restored) == set(weights)
    for key, value in weights.items():
        assert torch.equal(restored[key], value), key


def test_export_refuses_a_detector_that_is_not_centerpoint_shaped(tmp_path: Path) -> None:
    exp = LIDAR(exp_options={"model_size": "small"})
    path = tmp_path / "small.ckpt"
    torch.save({"state_dict": exp.state_dict(), METADATA_KEY: checkpoint_metadata(exp)}, path)
    with pytest.raises(SystemExit, match="model_size=small: only"):
        export_centerpoint(path, tmp_path / "out.pth")


def test_a_checkpoint_with_python_objects_needs_trust(tmp_path: Path) -> None:
    import argparse

    path = tmp_path / "objects.pth"
    torch.save({"state_dict": {}, "meta": {"args": argparse.Namespace(lr=1)}}, path)
    with pytest.raises(CheckpointError, match="only an unrestricted load can read.*--trust-source"):
        convert(path, tmp_path / "out.ckpt", "centerpoint_01", None, trusted=False)


@pytest.mark.slow
def test_mmdet3d_checkpoint_evaluates_and_teaches_as_it_is(
    unikd_centerpoint: tuple[Path, dict], synthetic_root: Path, tmp_path: Path
) -> None:
    exported = tmp_path / "centerpoint.pth"
    export_centerpoint(unikd_centerpoint[0], exported)
    common = ["--data_root", str(synthetic_root), "--output_root", str(tmp_path), "--no_progress_bar", "-b", "1"]
    evaluated = run_cli(LIDAR, [*common, "-e", "--ckpt_path", str(exported), "--limit_val_batches", "1",
                                "--exp_options", "model_size=centerpoint_01", "num_workers=0", "num_sweeps=1"])
    for key, value in unikd_centerpoint[1].items():
        assert torch.equal(evaluated.state_dict()[key], value), key
    assert list((evaluated.output_dir / "eval").glob("metrics_summary_epoch0.json"))

    with pytest.raises(CheckpointError, match="training resumes only from unikd checkpoints"):
        run_cli(LIDAR, [*common, "--ckpt_path", str(exported), "--exp_options", "model_size=centerpoint_01"])

    # a small camera student over the 0.1 m CenterPoint's +-51.2 m region, one distillation step
    student = ["model_size=small", "num_workers=0", "num_sweeps=1", "teacher_model_size=centerpoint_01"]
    distilled = run_cli(CAMERA_FROM_CENTERPOINT, [*common, "--teacher_ckpt", str(exported), "--max_epochs", "1",
                                                  "--limit_train_batches", "1", "--limit_val_batches", "0",
                                                  "--log_every_n_steps", "1", "--exp_options", *student])
    for key, value in unikd_centerpoint[1].items():
        assert torch.equal(distilled.objective.teacher.state_dict()[key.removeprefix("model.")], value), key
    header = (distilled.output_dir / "csv/version_0/metrics.csv").read_text().splitlines()[0]
    assert {"train/distill/feature", "train/distill/relation", "train/distill/response"} <= set(header.split(","))


@pytest.mark.parametrize(
    ("keys", "size", "experiment"),
    [
        ("lidar_keys.json", "bevfusion_lidar", "BEVFusion_nuscenes_transfusion_lidar_exp"),
        ("fusion_keys.json", "bevfusion_fusion", "BEVFusion_nuscenes_transfusion_fusion_exp"),
    ],
)
def test_bevfusion_checkpoint_converts_to_its_experiment(keys: str, size: str, experiment: str, tmp_path: Path) -> None:
    """An mmdet3d BEVFusion-L / -LC checkpoint (full width, under its own key names) becomes a unikd checkpoint of
    the TransFusion experiment of its sensors, its model size read from its keys."""
    listing = json.loads((REPO / "tests/fixtures/bevfusion" / keys).read_text())["keys"]
    generator = torch.Generator().manual_seed(0)
    geometry = {f"view_transform.{name}" for name in ("dx", "bx", "nx", "frustum")}  # checked, not random
    state = {key: torch.rand(shape, generator=generator) for key, shape in listing.items() if key not in geometry}
    source = tmp_path / "bevfusion.pth"
    torch.save({"state_dict": state, "meta": {"mmdet3d_version": "1.4.0"}}, source)
    assert convert(source, tmp_path / "unikd.ckpt", None, None, False) == size
    converted = torch.load(tmp_path / "unikd.ckpt", weights_only=True)
    assert converted[METADATA_KEY]["experiment"] == experiment and converted[METADATA_KEY]["model_size"] == size
    # a weight that needs no layout change arrives as it is
    assert torch.equal(converted["state_dict"]["model.head.class_encoding.weight"], state["bbox_head.class_encoding.weight"])
