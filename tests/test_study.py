"""The study engine on tiny runs: the report's numbers are the runs' own evaluation files, every run
is in report.json with a paired row per variant, a finished teacher, pretraining and plain student are
reused, runs go in dependency order and a failed run stops the others with its log's tail; mean and
standard deviation over seeds."""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unikd.data.classes import CLASSES
from unikd.evaluation.summary import flatten_summary
from unikd.study.report import compare_variants, format_tables, summarise
from unikd.study.results import mean_std
from unikd.study.runs import Run, RunFailed, Slot, run_all
from unikd.study.study import (
    DEFAULT_CAMERA_PRETRAIN_EPOCHS,
    Commands,
    StudySettings,
    plan_camera_pretrain,
    run_study,
)
from unikd.utils.visualization import box_corners_3d, project_to_image

EXP_DIR = Path(__file__).resolve().parents[1] / "exps/nuscenes/BEVFusion"
PAIRING = EXP_DIR / "BEVFusion_nuscenes_centerhead_camera_exp_distill_lidar.py"


def tiny_settings(root: Path, out: Path) -> StudySettings:
    return StudySettings(
        pairing=PAIRING, name="study_test", seeds=(0,), epochs=2, teacher_epochs=1, data_root=root, version="v1.0-mini",
        limit_train_batches="1", limit_val_batches="1", exp_options=("num_workers=0", "num_sweeps=2"),
        output_root=out, jobs=2, camera_pretrain_epochs=1, variants=("feature=10", "feature=0 relation=40"),
    )


@pytest.fixture(scope="module")
def study(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[StudySettings, dict]:
    settings = tiny_settings(synthetic_root, tmp_path_factory.mktemp("study"))
    return settings, run_study(settings, ["test"])


def summary_file(run_dir: Path, epoch: int) -> dict:
    return json.loads((run_dir / "eval" / f"metrics_summary_epoch{epoch}.json").read_text())


@pytest.mark.slow
def test_report_holds_every_run_with_the_runs_own_numbers(study: tuple[StudySettings, dict]) -> None:
    settings, returned = study
    folder = Path(returned["runs"][0]["log"]).parents[1]
    report = json.loads((folder / "report.json").read_text())
    assert [(run["role"], run["variant"], run["seed"]) for run in report["runs"]] == [
        ("plain", None, 0), ("distilled", "feature=10", 0), ("distilled", "feature=0 relation=40", 0)]
    assert not report["teacher"]["reused"] and not report["runs"][0]["reused"]
    markdown = (folder / "report.md").read_text()
    plain = report["runs"][0]
    for variant, distilled in zip(report["variants"], report["runs"][1:], strict=True):
        # one row per variant: its paired difference against the one plain student (one seed: no interval)
        paired = variant["paired"]["mAP"]
        assert paired["differences"] == [distilled["metrics"]["mAP"] - plain["metrics"]["mAP"]]
        assert f"| {variant['name']} | 0 | {plain['metrics']['mAP']:.4f} | {distilled['metrics']['mAP']:.4f} | " \
            f"{paired['mean']:+.4f} none (1 seed) |" in markdown
        # the distilled run trained with its variant's options after --distill_options
        options = torch.load(distilled["checkpoint"], map_location="cpu", weights_only=True)["hyper_parameters"]
        assert options["exp_options"]["distill.weights.feature"] == float(variant["name"].split()[0].split("=")[1])
    for run in [report["teacher"], *report["runs"]]:
        # -e of the last checkpoint: the (one) epoch it was saved at
        epoch = settings.teacher_epochs - 1 if run["role"] == "teacher" else settings.epochs - 1
        own = flatten_summary(summary_file(Path(run["eval_dir"]), epoch))
        assert run["metrics"] == pytest.approx(own, nan_ok=True)
        model = run.get("variant") or run["role"]
        assert f"| {model} | {run['seed']} | {own['mAP']:.4f} | {own['NDS']:.4f} |" in markdown
    for run in report["runs"]:
        # the curve is the training run's validation of every epoch, as its own summaries hold it
        train_dir = Path(run["train_dir"])
        assert [epoch for epoch, _ in run["val_mAP"]] == list(range(settings.epochs))
        for epoch, value in run["val_mAP"]:
            assert value == pytest.approx(summary_file(train_dir, epoch)["mean_ap"])
        # a distilled checkpoint evaluated by the plain student experiment scores as in its own last validation
        last = flatten_summary(summary_file(train_dir, settings.epochs - 1))
        assert run["metrics"] == pytest.approx(last, abs=1e-6, nan_ok=True)
    # both students started from the study's depth pretraining
    pretrain = Path(report["camera_pretrain"]["checkpoint"])
    assert pretrain.is_file() and not report["camera_pretrain"]["reused"]
    assert f"depth pretraining {report['camera_pretrain']['experiment']} (1 epochs" in markdown
    for run in report["runs"]:
        options = torch.load(run["checkpoint"], map_location="cpu", weights_only=True)["hyper_parameters"]["exp_options"]
        assert options["camera_init"] == str(pretrain)
    with Image.open(folder / "report.png") as image:
        assert image.size[0] > 1000 and image.size[1] > 1500  # paired plots, curves, BEVs, the six camera images
    assert all(Path(run["log"]).is_file() and Path(run["eval_log"]).is_file() for run in report["runs"])


@pytest.mark.slow
def test_a_finished_teacher_pretraining_and_plain_students_are_reused(
    study: tuple[StudySettings, dict], capsys: pytest.CaptureFixture
) -> None:
    settings, first = study
    checkpoint = Path(first["teacher"]["checkpoint"])
    plain = first["runs"][0]
    mtimes = [path.stat().st_mtime_ns for path in (checkpoint, Path(plain["checkpoint"]))]
    second = run_study(replace(settings, variants=("response=5",)), ["test"])  # a new variant: only it trains
    assert second["teacher"]["reused"] and second["teacher"]["checkpoint"] == str(checkpoint)
    assert second["teacher"]["metrics"] == pytest.approx(first["teacher"]["metrics"], nan_ok=True)
    pretrain = Path(first["camera_pretrain"]["checkpoint"])
    assert second["camera_pretrain"]["reused"] and second["camera_pretrain"]["checkpoint"] == str(pretrain)
    reused = second["runs"][0]
    assert reused["reused"] and reused["train_dir"] == plain["train_dir"]
    assert reused["metrics"] == pytest.approx(plain["metrics"], nan_ok=True)
    assert (reused["train_seconds"], reused["log"]) == (plain["train_seconds"], plain["log"])
    assert [path.stat().st_mtime_ns for path in (checkpoint, Path(plain["checkpoint"]))] == mtimes
    assert [run["variant"] for run in second["runs"]] == [None, "response=5"]
    printed = capsys.readouterr().out
    assert f"teacher: reusing {checkpoint}" in printed and f"camera_pretrain: reusing {pretrain}" in printed
    assert f"plain-seed0: reusing {plain['checkpoint']}" in printed


def test_mean_and_standard_deviation_over_seeds() -> None:
    def run(role: str, seed: int, value: float) -> dict:
        return {"role": role, "variant": "distilled" if role == "distilled" else None, "seed": seed,
                "metrics": {"mAP": value, "NDS": value / 2}, "train_seconds": 10.0 * value, "train_dir": f"{role}{seed}"}

    report = {"teacher": run("teacher", 0, 0.5), "runs": [run("plain", 0, 0.1), run("plain", 1, 0.3),
                                                          run("distilled", 0, 0.2), run("distilled", 1, 0.6)],
              "variants": [{"name": "distilled"}]}
    summary = summarise(report)
    # by hand: mean (0.2 + 0.6) / 2 = 0.4, sample std sqrt(((0.2 - 0.4)^2 + (0.6 - 0.4)^2) / 1) = 0.2 * sqrt(2)
    assert summary["distilled"]["mAP"]["mean"] == pytest.approx(0.4)
    assert summary["distilled"]["mAP"]["std"] == pytest.approx(0.2 * math.sqrt(2))
    assert summary["plain"]["NDS"]["values"] == [0.05, 0.15]
    assert summary["teacher"]["mAP"] == {"mean": 0.5, "std": None, "values": [0.5]}
    assert mean_std([1.0, 2.0, 4.0])["std"] == pytest.approx(math.sqrt(7 / 3))
    undefined = mean_std([0.5, math.nan, 0.7])  # statistics.stdev raises on a NaN among the values
    assert math.isnan(undefined["mean"]) and math.isnan(undefined["std"]) and undefined["values"][0] == 0.5


def test_tables_show_mean_std_and_every_run() -> None:
    metrics = {"mAP": 0.0, "NDS": 0.0, "mATE": 1.0, "mASE": 1.0, "mAOE": 1.0, "mAVE": 1.0, "mAAE": 1.0}
    def run(role: str, seed: int, value: float) -> dict:
        flat = metrics | {"mAP": value} | {f"AP/{name}": value for name in CLASSES}
        return {"role": role, "variant": "distilled" if role == "distilled" else None, "seed": seed, "metrics": flat,
                "train_seconds": 60.0 + seed, "train_dir": f"{role}{seed}"}

    report = {"teacher": run("teacher", 0, 0.5), "runs": [run("plain", 0, 0.1), run("plain", 1, 0.3),
                                                          run("distilled", 0, 0.2), run("distilled", 1, 0.6)]}
    report["variants"] = compare_variants(report["runs"], [("distilled", [])])
    report["summary"] = summarise(report)
    tables = format_tables(report)
    assert "| plain | 2 | 0.2000 ± 0.1414 |" in tables
    assert "| teacher | 1 | 0.5000 |" in tables
    assert "| distilled | 1 | 0.6000 | 0.0000 | 61 s | distilled1 |" in tables


def python_run(tmp_path: Path, name: str, code: str, needs: tuple[str, ...] = ()) -> Run:
    return Run(name, [sys.executable, "-c", code], tmp_path / f"{name}.log", tmp_path / name, needs=needs)


def test_runs_go_in_dependency_order_and_a_failure_stops_the_others(tmp_path: Path) -> None:
    marker = tmp_path / "first.done"
    first = python_run(tmp_path, "first", f"import time, pathlib; time.sleep(0.5); pathlib.Path({str(marker)!r}).touch()")
    second = python_run(tmp_path, "second", f"import pathlib, sys; sys.exit(0 if pathlib.Path({str(marker)!r}).exists() else 3)",
                        needs=("first",))
    run_all([second, first], [Slot(), Slot()], poll_seconds=0.1)
    assert first.seconds >= 0.5 and second.seconds is not None

    slow = python_run(tmp_path, "slow", "import time; time.sleep(60)")
    broken = python_run(tmp_path, "broken", "print('the data went away'); raise SystemExit(2)")
    start = time.perf_counter()
    with pytest.raises(RunFailed, match=r"(?s)run broken failed \(exit status 2\).*the data went away"):
        run_all([slow, broken], [Slot(), Slot()], poll_seconds=0.1)
    assert time.perf_counter() - start < 30  # the slow run was stopped, not waited for


def test_boxes_project_into_the_augmented_image_through_the_batch_matrices() -> None:
    lidar2cam = torch.tensor([[0.0, -1, 0, 0], [0, 0, -1, 0], [1, 0, 0, 0], [0, 0, 0, 1]])  # x forward -> z
    cam2img = torch.tensor([[100.0, 0, 50, 0], [0, 100, 40, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    img_aug = torch.diag(torch.tensor([0.5, 0.5, 1.0, 1.0]))
    bda = torch.eye(4)
    bda[0, 3] = 1.0  # the augmented frame is the original one moved 1 m along x
    batch = {"lidar2cam": lidar2cam[None, None], "cam2img": cam2img[None, None], "img_aug": img_aug[None, None],
             "bda": bda[None]}
    pixels, depth = project_to_image(np.array([[11.0, 2.0, -1.0], [-5.0, 0.0, 0.0]]), batch, 0, 0)
    # by hand: original (10, 2, -1) -> camera (-2, 1, 10) -> pixel (100 * -2 / 10 + 50, 100 * 1 / 10 + 40) = (30, 50),
    # halved by the augmentation; the second point is behind the camera
    assert pixels[0] == pytest.approx([15.0, 25.0])
    assert depth.tolist() == pytest.approx([10.0, -6.0])
    corners = box_corners_3d(np.array([[0.0, 0.0, 1.0, 4.0, 2.0, 2.0, np.pi / 2]]))[0]
    assert sorted(map(tuple, corners.round(6).tolist())) == sorted(
        (x, y, z) for x in (-1.0, 1.0) for y in (-2.0, 2.0) for z in (0.0, 2.0))


def test_depth_pretraining_is_for_camera_students(tmp_path: Path) -> None:
    lidar_student = EXP_DIR / "BEVFusion_nuscenes_centerhead_lidar_exp.py"
    camera_student = EXP_DIR / "BEVFusion_nuscenes_centerhead_camera_exp.py"
    settings = tiny_settings(tmp_path, tmp_path / "out")
    for epochs, student, expected in [(None, lidar_student, None), (0, camera_student, None),
                                      (None, camera_student, DEFAULT_CAMERA_PRETRAIN_EPOCHS), (2, camera_student, 2)]:
        s = replace(settings, camera_pretrain_epochs=epochs)
        plan = plan_camera_pretrain(s, Commands(s), student, tmp_path / "logs")
        assert (plan and plan.settings["epochs"]) == expected
    s = replace(settings, camera_pretrain_epochs=2)
    with pytest.raises(ValueError, match="has no camera branch"):
        plan_camera_pretrain(s, Commands(s), lidar_student, tmp_path / "logs")
