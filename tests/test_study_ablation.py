"""The study's paired statistics (against hand-computed cases), its report rows per variant, and the
ablation's plan: the variants share one teacher, one depth pretraining and one plain student per seed,
a later study reuses the recorded plain students, a shared run another live study trains is left alone,
and a bad variant fails before anything trains."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from unikd.exps.exp_files import load_exp_class
from unikd.study.paired import paired_difference, t_quantile
from unikd.study.records import SharedRunBusy, lock_path, read_record, write_record
from unikd.study.report import compare_variants, format_tables, summarise, variants_table
from unikd.study.runs import Run, RunFailed, Slot, run_all
from unikd.study.study import SharedPlan, StudySettings, pairing_files, plan_study, study_variants
from unikd.study.variants import Variant, VariantError, parse_variant, read_variants_file

ROOT = Path(__file__).resolve().parents[1]
PAIRING = ROOT / "exps/nuscenes/BEVFusion/BEVFusion_nuscenes_centerhead_camera_exp_distill_lidar.py"


def test_student_t_quantiles_match_the_printed_table() -> None:
    # two-sided 95% critical values of a printed t table (4 decimals)
    for dof, value in [(1, 12.7062), (2, 4.3027), (3, 3.1824), (4, 2.7764), (9, 2.2622), (29, 2.0452)]:
        assert t_quantile(0.975, dof) == pytest.approx(value, abs=5e-5)
    with pytest.raises(ValueError, match="at least 1 degree of freedom"):
        t_quantile(0.975, 0)


def test_paired_difference_by_hand() -> None:
    plain = {7: 0.090, 0: 0.100, 3: 0.200}
    distilled = {0: 0.110, 3: 0.195, 7: 0.112}  # differences by seed 0 / 3 / 7: +0.010, -0.005, +0.022
    stats = paired_difference(plain, distilled, lower_is_better=False)
    # by hand: mean 0.027 / 3 = 0.009; deviations +0.001, -0.014, +0.013; squares sum 3.66e-4; / (3 - 1)
    # = 1.83e-4; t(0.975, 2) = 4.302653 (printed table); half width 4.302653 * sqrt(1.83e-4) / sqrt(3)
    sd = math.sqrt(1.83e-4)
    half = 4.302653 * sd / math.sqrt(3)
    assert stats["seeds"] == [0, 3, 7]
    assert stats["differences"] == pytest.approx([0.010, -0.005, 0.022])
    assert stats["plain"] == [0.100, 0.200, 0.090] and stats["distilled"] == [0.110, 0.195, 0.112]
    assert stats["mean"] == pytest.approx(0.009)
    assert stats["std"] == pytest.approx(sd)
    assert stats["interval"] == pytest.approx([0.009 - half, 0.009 + half], abs=1e-7)
    assert stats["interval"][0] == pytest.approx(-0.024605, abs=1e-6)  # the interval spans 0: not beyond noise
    assert stats["improved"] == 2 and stats["n"] == 3
    # an error figure improves when it falls: only seed 3's difference is negative
    assert paired_difference(plain, distilled, lower_is_better=True)["improved"] == 1


def test_one_seed_gives_no_interval_and_nan_gives_an_undefined_mean() -> None:
    one = paired_difference({4: 0.0789}, {4: 0.1010}, lower_is_better=False)
    assert one["mean"] == pytest.approx(0.0221) and one["std"] is None and one["interval"] is None
    assert one["improved"] == 1
    undefined = paired_difference({0: 0.5, 1: math.nan}, {0: 0.4, 1: 0.3}, lower_is_better=True)
    assert math.isnan(undefined["mean"]) and all(math.isnan(v) for v in undefined["interval"])
    assert undefined["improved"] == 1  # seed 0 (0.4 < 0.5); seed 1 is undefined
    with pytest.raises(ValueError, match=r"paired seeds differ: plain \[0, 1\], distilled \[0\]"):
        paired_difference({0: 0.1, 1: 0.2}, {0: 0.3}, lower_is_better=False)


def fake_run(role: str, variant: str | None, seed: int, ap: float, nds: float, seconds: float) -> dict:
    metrics = {"mAP": ap, "NDS": nds, "mATE": 0.5, "mASE": 0.3, "mAOE": 1.0 - nds, "mAVE": 1.0, "mAAE": 0.4}
    metrics |= {f"AP/{name}": ap for name in ("car", "truck", "construction_vehicle", "bus", "trailer", "barrier",
                                               "motorcycle", "bicycle", "pedestrian", "traffic_cone")}
    return {"role": role, "variant": variant, "seed": seed, "metrics": metrics, "train_seconds": seconds,
            "train_dir": f"/runs/{variant or role}-{seed}", "reused": role == "plain", "log": "l", "eval_log": "e"}


def ablation_report() -> dict:
    runs = [fake_run("plain", None, 0, 0.10, 0.20, 100.0), fake_run("plain", None, 1, 0.20, 0.30, 110.0),
            fake_run("distilled", "feature=10", 1, 0.23, 0.31, 165.0),
            fake_run("distilled", "feature=10", 0, 0.11, 0.24, 150.0),
            fake_run("distilled", "relation=40", 0, 0.08, 0.21, 105.0),
            fake_run("distilled", "relation=40", 1, 0.21, 0.33, 126.0)]
    report = {"teacher": fake_run("teacher", None, 0, 0.39, 0.40, 300.0), "runs": runs}
    report["variants"] = compare_variants(runs, [("feature=10", ["distill_weights.feature=10"]),
                                                 ("relation=40", ["distill_weights.relation=40"])])
    report["summary"] = summarise(report)
    return report


def test_one_report_row_per_variant_with_its_paired_gain() -> None:
    report = ablation_report()
    table = variants_table(report)
    # feature=10: mAP differences +0.01 / +0.03 -> mean 0.02, sd sqrt(2) * 0.01, half width
    # 12.7062047 * 0.01 * sqrt(2) / sqrt(2) = 0.1271; NDS +0.04 / +0.01 -> mean 0.025, sd 0.03 / sqrt(2),
    # half width 12.7062047 * 0.015 = 0.1906; time (150 + 165) / (100 + 110) = 1.5
    assert ("| feature=10 | 0 1 | 0.1500 | 0.1700 | +0.0200 [-0.1071, +0.1471] | 2/2 | +0.0250 [-0.1656, +0.2156] "
            "| 1.50 |") in table
    # relation=40: mAP -0.02 / +0.01 -> mean -0.005, sd 0.03 / sqrt(2), half 0.1906; NDS +0.01 / +0.03; time 1.10
    assert ("| relation=40 | 0 1 | 0.1500 | 0.1450 | -0.0050 [-0.1956, +0.1856] | 1/2 | +0.0200 [-0.1071, +0.1471] "
            "| 1.10 |") in table
    tables = format_tables(report)
    assert "Student t, n - 1 degrees of freedom; none with one seed" in tables
    # per figure: an error (mAOE = 1 - NDS) improves by falling, on both seeds of feature=10
    assert "| mAOE | 0: -0.0400, 1: -0.0100 | -0.0250 |" in tables and "| 2/2 (lower) |" in tables
    # the summary groups the distilled students by variant
    assert "| relation=40 | 2 | 0.1450 ± 0.0919 |" in tables
    assert report["summary"]["feature=10"]["mAP"]["values"] == [0.23, 0.11]


def test_one_seed_report_says_there_is_no_interval() -> None:
    runs = [fake_run("plain", None, 4, 0.0789, 0.1646, 100.0), fake_run("distilled", "distilled", 4, 0.1010, 0.2075, 120.0)]
    variants = compare_variants(runs, [("distilled", [])])
    table = variants_table({"variants": variants})
    assert "| distilled | 4 | 0.0789 | 0.1010 | +0.0221 none (1 seed) | 1/1 | +0.0429 none (1 seed) | 1.20 |" in table


def test_variants_expand_short_forms_and_read_from_files(tmp_path: Path) -> None:
    pairing = load_exp_class(PAIRING)
    variant = parse_variant("feature=0  relation=40 teacher_model_size=small distill_weights.response=5", pairing)
    assert variant == Variant("feature=0 relation=40 teacher_model_size=small distill_weights.response=5",
                              ("distill_weights.feature=0", "distill_weights.relation=40", "teacher_model_size=small",
                               "distill_weights.response=5"))
    with pytest.raises(VariantError, match=r"--variants 'feature=1 relation': expected key=value, got 'relation'"):
        parse_variant("feature=1 relation", pairing)
    text = tmp_path / "variants.txt"
    text.write_text("# weights\nfeature=10\n\n  feature=0 relation=40   # relation alone\n")
    assert read_variants_file(text) == ["feature=10", "feature=0 relation=40"]
    listed = tmp_path / "variants.json"
    listed.write_text(json.dumps(["feature=10", ["feature=0", "relation=40"]]))
    assert read_variants_file(listed) == ["feature=10", "feature=0 relation=40"]
    listed.write_text(json.dumps({"feature": 10}))
    with pytest.raises(VariantError, match="expected a JSON list of variants"):
        read_variants_file(listed)


def ablation_settings(tmp_path: Path, variants: tuple[str, ...]) -> StudySettings:
    return StudySettings(pairing=PAIRING, name="ablation_test", seeds=(0, 1), epochs=2, teacher_epochs=1,
                         data_root=tmp_path / "data", version="v1.0-mini", exp_options=("num_workers=0",),
                         distill_options=("distill_weights.response=5",), variants=variants,
                         output_root=tmp_path / "out", camera_pretrain_epochs=1)


def plan(s: StudySettings, folder: Path):
    student_file, teacher_file = pairing_files(s.pairing)
    variants = study_variants(s, load_exp_class(s.pairing), s.model_size)
    return plan_study(s, variants, student_file, teacher_file, folder)


def option_value(command: list[str], key: str) -> list[str]:
    return [item.split("=", 1)[1] for item in command if item.startswith(f"{key}=")]


def test_variants_share_the_teacher_pretraining_and_plain_students(tmp_path: Path) -> None:
    s = ablation_settings(tmp_path, ("feature=10", "feature=0 relation=40"))
    study = plan(s, tmp_path / "report")
    runs = study.runs()
    names = [run.name for run in runs]
    assert sorted(names) == sorted([
        "teacher", "teacher-eval", "camera_pretrain", "plain-seed0", "plain-seed0-eval", "plain-seed1",
        "plain-seed1-eval", *(f"distilled-v{v}-seed{k}{e}" for v in (0, 1) for k in (0, 1) for e in ("", "-eval"))])
    trainings = [run for run in runs if not run.name.endswith("-eval")]
    assert len(trainings) == 1 + 1 + 2 + 4
    by_name = {run.name: run for run in runs}
    pretrain, teacher = study.pretrain.checkpoint, study.teacher.checkpoint
    plain_root = s.output_root / "plain_students" / "BEVFusion_nuscenes_centerhead_camera_exp"
    for seed in (0, 1):
        plain = by_name[f"plain-seed{seed}"]
        assert plain.run_dir.parent == plain_root and "--teacher_ckpt" not in plain.command
        assert option_value(plain.command, "camera_init") == [str(pretrain)] and plain.needs == ("camera_pretrain",)
        assert not option_value(plain.command, "distill_weights.response")
        for v, weights in ((0, {"feature": ["10"]}), (1, {"feature": ["0"], "relation": ["40"]})):
            distilled = by_name[f"distilled-v{v}-seed{seed}"]
            command = distilled.command
            assert command[command.index("--seed") + 1] == str(seed)
            assert command[command.index("--teacher_ckpt") + 1] == str(teacher)
            assert option_value(command, "camera_init") == [str(pretrain)]
            assert option_value(command, "distill_weights.response") == ["5"]  # --distill_options: every variant
            for term, value in weights.items():
                assert option_value(command, f"distill_weights.{term}") == value
            assert set(distilled.needs) == {"camera_pretrain", "teacher"}
    assert len({run.command[run.command.index("--teacher_ckpt") + 1] for run in runs if "--teacher_ckpt" in run.command}) == 1


def test_a_later_study_reuses_the_recorded_plain_students(tmp_path: Path) -> None:
    s = ablation_settings(tmp_path, ("feature=10",))
    first = plan(s, tmp_path / "first")
    for seed, shared in first.plain.items():  # as if the first study had trained them
        shared.run_dir.mkdir(parents=True)
        write_record(shared.run_dir, shared.settings, shared.checkpoint, 100.0 + seed, shared.eval_dir, 20.0,
                     {"plain": "log"})
    second = plan(replace(s, variants=("relation=40", "response=2")), tmp_path / "second")
    for seed, shared in second.plain.items():
        assert shared.run_dir == first.plain[seed].run_dir and shared.train is None and shared.evaluate is None
        assert shared.record["train_seconds"] == 100.0 + seed
    names = {run.name for run in second.runs()}
    assert not any(name.startswith("plain") for name in names)
    assert {name for name in names if not name.endswith("-eval") and name.startswith("distilled")} == {
        "distilled-v0-seed0", "distilled-v0-seed1", "distilled-v1-seed0", "distilled-v1-seed1"}
    # another student schedule or depth pretraining is another plain student
    assert all(shared.train is not None for shared in plan(replace(s, epochs=3), tmp_path / "third").plain.values())
    other = plan(replace(s, camera_pretrain_epochs=2), tmp_path / "fourth")
    assert all(shared.train is not None for shared in other.plain.values())


def test_a_shared_run_is_recorded_when_done_though_a_later_run_fails(tmp_path: Path) -> None:
    def python_run(name: str, code: str, needs: tuple[str, ...] = ()) -> Run:
        return Run(name, [sys.executable, "-c", code], tmp_path / f"{name}.log", tmp_path / name, needs=needs)

    run_dir = tmp_path / "plain_students" / "plain_student-abc"
    run_dir.mkdir(parents=True)
    shared = SharedPlan("plain-seed0", {"seed": 0}, run_dir, tmp_path / "eval", None,
                        train=python_run("plain-seed0", "pass"), evaluate=python_run("plain-seed0-eval", "pass", ("plain-seed0",)))
    failing = python_run("distilled-seed0", "raise SystemExit(1)", ("plain-seed0-eval",))
    with pytest.raises(RunFailed, match="run distilled-seed0 failed"):
        run_all([shared.train, shared.evaluate, failing], [Slot()], poll_seconds=0.05, on_done=lambda _: shared.finish())
    record = read_record(run_dir, {"seed": 0})
    assert record is not None and record["train_seconds"] == shared.train.seconds
    assert record["logs"] == {"plain-seed0": str(tmp_path / "plain-seed0.log"),
                              "plain-seed0-eval": str(tmp_path / "plain-seed0-eval.log")}


def run_tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tools/distill_study.py"), *args], capture_output=True,
                          text=True, timeout=300, env=os.environ | {"OMP_NUM_THREADS": "1"})


def test_a_bad_variant_stops_the_study_before_any_run(tmp_path: Path) -> None:
    (tmp_path / "data" / "v1.0-mini").mkdir(parents=True)  # the variants are checked before any data is read
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools/distill_study.py"), "--data_root", str(tmp_path / "data"), "--version",
         "v1.0-mini", "--output_root", str(tmp_path / "out"), "--seeds", "0", "1", "--variants", "feature=10",
         "relatoin=40"], capture_output=True, text=True, timeout=300, env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "--variants 'relatoin=40': --exp_options distill.weights.relatoin: distill.weights has no key 'relatoin'; "
        "known: ['feature', 'heatmap_kd', 'infonce', 'relation', 'response']")
    assert not (tmp_path / "out").exists()  # nothing planned, nothing trained


def test_variants_are_checked_as_their_runs_will_build_them(tmp_path: Path) -> None:
    pairing = load_exp_class(PAIRING)
    s = ablation_settings(tmp_path, ("feature=ten",))
    with pytest.raises(VariantError, match=r"--variants 'feature=ten': --exp_options distill.weights.feature='ten': "
                       "expected float"):
        study_variants(s, pairing, s.model_size)
    with pytest.raises(VariantError, match=r"--variants: \['feature=10'\] given more than once"):
        study_variants(replace(s, variants=("feature=10", "feature=10")), pairing, s.model_size)
    with pytest.raises(VariantError, match=r"--distill_options: --exp_options distill.weights.feture: distill.weights has no key 'feture'"):
        study_variants(replace(s, variants=(), distill_options=("distill_weights.feture=1",)), pairing, s.model_size)
    with pytest.raises(VariantError, match=f"--variants_file {tmp_path / 'missing.txt'}: no such file"):
        read_variants_file(tmp_path / "missing.txt")


def test_a_shared_run_another_live_study_trains_is_not_cleared(tmp_path: Path) -> None:
    s = ablation_settings(tmp_path, ("feature=10",))
    first = plan(s, tmp_path / "first")
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = lock_path(first.plain[1].run_dir)
        lock.write_text(json.dumps({"host": socket.gethostname(), "pid": other.pid}))  # as if it trained seed 1
        marker = first.plain[1].run_dir / "checkpoints" / "epoch=0.ckpt"
        marker.parent.mkdir(parents=True)
        marker.touch()
        with pytest.raises(SharedRunBusy, match=rf"plain_student-\w+ is being trained by another study \(process "
                           rf"{other.pid} on "):
            plan(s, tmp_path / "second")
        assert marker.is_file()  # its unfinished folder is left alone
    finally:
        other.kill()
        other.wait()
    # once that process has ended, its claim is taken over: the unfinished folder is cleared and planned again
    again = plan(s, tmp_path / "third")
    assert again.plain[1].train is not None and not marker.exists()
    assert json.loads(lock.read_text())["pid"] == os.getpid()
