"""The study engine: for a pairing (a distillation experiment file, which names its student and
teacher experiments), train the teacher (or reuse a finished one with the same settings), the plain
and the distilled student for every seed on the same schedule, evaluate all of them with `-e`, and
write outputs/<name>/<timestamp>/report.{json,md,png}.

Every run is a subprocess of an experiment file (`unikd.study.runs`), with its own run folder and a
log under the report folder's logs/. Students validate every epoch (the mAP curve of the report);
the teacher does not (its `-e` evaluates it). Teachers live in <output_root>/teachers/, shared by
every study of that output root.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from unikd.data.synthetic import generate_synthetic_nuscenes
from unikd.exps.base_exp import BaseExp
from unikd.exps.distill_exp import DistillExp, load_exp_class
from unikd.study.figures import predict_sample, save_report_figure
from unikd.study.records import read_record, shared_run_name, write_record
from unikd.study.report import format_tables, summarise, write_report
from unikd.study.results import eval_metrics, val_map_per_epoch
from unikd.study.runs import Run, device_slots, run_all

DEPTH_PRETRAIN_FILE = Path(__file__).resolve().parents[2] / "exps/nuscenes/BEVFusion/BEVFusion_nuscenes_camera_depth_pretrain_exp.py"


# the camera students' depth pretraining by default: 6 epochs of the synthetic trainval set double the plain
# small camera student's mAP after 4 epochs (0.039 -> 0.083) and run beside the teacher
DEFAULT_CAMERA_PRETRAIN_EPOCHS = 6


@dataclass
class StudySettings:
    """What a study runs. `limit_train_batches` / `limit_val_batches` are passed as the CLI reads them."""

    pairing: Path
    name: str = "distill_study"
    seeds: tuple[int, ...] = (0,)
    epochs: int = 4
    teacher_epochs: int = 2
    model_size: str = "small"
    teacher_model_size: str | None = None  # None: model_size
    teacher_seed: int = 0
    # the synthetic trainval variant, 40 + 10 scenes (400 training samples: a camera student learns from
    # 80 mini ones far more slowly), built there when absent and asked for
    data_root: Path = Path("data/synthetic_trainval")
    version: str = "v1.0-trainval"
    train_scenes: int = 40
    val_scenes: int = 10
    batch_size: int = 2
    limit_train_batches: str | None = None
    limit_val_batches: str | None = None
    exp_options: tuple[str, ...] = ()  # for every run
    distill_options: tuple[str, ...] = ()  # for the distilled students only
    output_root: Path = Path("outputs")
    jobs: int | None = None  # parallel runs; None: one per GPU, else the CPU cores (at most 2 per seed)
    make_synthetic: bool = False  # build the synthetic set at data_root when it is absent
    # depth pretraining of a camera student's backbone, neck and depth net (`unikd.exps.depth_pretrain_exp`),
    # run once beside the teacher and the initialisation of the plain and the distilled students; 0: none,
    # None: DEFAULT_CAMERA_PRETRAIN_EPOCHS for a student with cameras, none for one without
    camera_pretrain_epochs: int | None = None
    score_threshold: float = 0.3  # boxes drawn in the figure


def pairing_files(pairing: Path) -> tuple[Path, Path]:
    """(plain student, teacher) experiment files of a distillation experiment file."""
    exp_class = load_exp_class(pairing)
    if not issubclass(exp_class, DistillExp):
        raise ValueError(f"{pairing} is not a distillation experiment (its class is no DistillExp)")
    student = next(c for c in exp_class.__mro__[1:] if issubclass(c, BaseExp) and not issubclass(c, DistillExp))
    return Path(inspect.getfile(student)).resolve(), Path(inspect.getfile(exp_class.teacher_exp_class)).resolve()


def ensure_data(settings: StudySettings) -> None:
    """Build the synthetic set at `data_root` if it is absent and asked for; else it must be there."""
    if (settings.data_root / settings.version).is_dir():
        return
    if not settings.make_synthetic:
        raise FileNotFoundError(f"--data_root {settings.data_root} holds no {settings.version}/ (nuScenes tables)")
    print(f"building the synthetic {settings.version} set at {settings.data_root} ...", flush=True)
    start = time.perf_counter()
    generate_synthetic_nuscenes(settings.data_root, settings.version, train_scenes=settings.train_scenes,
                                val_scenes=settings.val_scenes, workers=min(4, os.cpu_count() or 1))
    print(f"built in {time.perf_counter() - start:.0f} s", flush=True)


class Commands:
    """The experiment-file command lines of one study."""

    def __init__(self, settings: StudySettings) -> None:
        self.settings = settings

    def common(self, exp_file: Path, seed: int, output_root: Path, run_name: str, options: list[str]) -> list[str]:
        s = self.settings
        return [sys.executable, str(exp_file), "--data_root", str(s.data_root), "--version", s.version,
                "-b", str(s.batch_size), "--seed", str(seed), "--output_root", str(output_root),
                "--run_name", run_name, "--no_progress_bar", "--exp_options", *options]

    def train(self, exp_file: Path, seed: int, epochs: int, output_root: Path, run_name: str, options: list[str],
              validate: bool, teacher_ckpt: Path | None = None) -> list[str]:
        """Training; `validate`: every epoch (else never)."""
        s = self.settings
        command = self.common(exp_file, seed, output_root, run_name, options) + ["--max_epochs", str(epochs)]
        if s.limit_train_batches is not None:
            command += ["--limit_train_batches", s.limit_train_batches]
        if not validate:
            command += ["--limit_val_batches", "0"]
        else:
            command += ["--check_val_every_n_epoch", "1"]
            command += ["--limit_val_batches", s.limit_val_batches] if s.limit_val_batches is not None else []
        return command + (["--teacher_ckpt", str(teacher_ckpt)] if teacher_ckpt is not None else [])

    def evaluate(self, exp_file: Path, checkpoint: Path, output_root: Path, run_name: str, options: list[str]) -> list[str]:
        s = self.settings
        command = self.common(exp_file, 0, output_root, run_name, options) + ["-e", "--ckpt_path", str(checkpoint)]
        return command + (["--limit_val_batches", s.limit_val_batches] if s.limit_val_batches is not None else [])


@dataclass
class SharedPlan:
    """A run the students share (the teacher, the depth pretraining): its settings and folders, and either
    the record of a finished run with those settings (reused) or the runs that train (and evaluate) it."""

    name: str
    settings: dict[str, Any]
    run_dir: Path
    eval_dir: Path | None
    record: dict[str, Any] | None
    train: Run | None = None
    evaluate: Run | None = None

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / "checkpoints" / "last.ckpt"

    @property
    def needs(self) -> tuple[str, ...]:
        """What a run that reads the checkpoint waits for: the training, unless it is reused."""
        return (self.train.name,) if self.train else ()

    def announce(self) -> None:
        if self.record is not None:
            print(f"{self.name}: reusing {self.checkpoint} (same settings, finished {self.record['finished']})")
        else:
            print(f"{self.name}: training {self.settings['experiment']} in {self.run_dir}")

    def finish(self) -> None:
        """Record a run this study trained, once it (and its evaluation) is done."""
        if self.record is None:
            self.record = write_record(self.run_dir, self.settings, self.checkpoint, self.train.seconds, self.eval_dir)


def plan_shared(s: StudySettings, commands: Commands, name: str, exp_file: Path, size: str, epochs: int,
                logs: Path, evaluate: bool) -> SharedPlan:
    """Reuse the finished run of the same settings (experiment, model size, epochs, seed, data, batches,
    options) in <output_root>/<name>s/, else plan its runs (training, and `-e` if `evaluate`) in a fresh folder."""
    settings = {"experiment": exp_file.stem, "model_size": size, "epochs": epochs,
                "seed": s.teacher_seed, "data_root": str(s.data_root), "version": s.version,
                "batch_size": s.batch_size, "limit_train_batches": s.limit_train_batches,
                "exp_options": list(s.exp_options)}
    root = s.output_root / f"{name}s"
    run_name = shared_run_name(name, settings)
    run_dir = root / exp_file.stem / run_name
    eval_dir = root / exp_file.stem / f"{run_name}-eval" if evaluate else None
    plan = SharedPlan(name, settings, run_dir, eval_dir, read_record(run_dir, settings))
    if plan.record is not None:
        return plan
    for folder in (run_dir, eval_dir):  # an unfinished earlier attempt
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
    options = [f"model_size={size}", *s.exp_options]
    plan.train = Run(name, commands.train(exp_file, s.teacher_seed, epochs, root, run_name, options, validate=False),
                     logs / f"{name}.log", run_dir, epochs)
    if evaluate:
        plan.evaluate = Run(f"{name}-eval", commands.evaluate(exp_file, plan.checkpoint, root, eval_dir.name, options),
                            logs / f"{name}-eval.log", eval_dir, needs=(name,))
    return plan


def plan_camera_pretrain(s: StudySettings, commands: Commands, student_file: Path, logs: Path) -> SharedPlan | None:
    """The depth pretraining of a camera student (None when it is off); asking for it for a student without
    cameras is an error."""
    has_camera = "camera" in load_exp_class(student_file).modalities
    epochs = s.camera_pretrain_epochs
    if epochs is None:
        epochs = DEFAULT_CAMERA_PRETRAIN_EPOCHS if has_camera else 0
    if epochs <= 0:
        return None
    if not has_camera:
        raise ValueError(f"camera_pretrain_epochs={epochs}: the student {student_file.stem} has no camera branch; "
                         "set it to 0")
    return plan_shared(s, commands, "camera_pretrain", DEPTH_PRETRAIN_FILE, s.model_size, epochs, logs, evaluate=False)


def plan_students(s: StudySettings, commands: Commands, student_file: Path, teacher: SharedPlan,
                  pretrain: SharedPlan | None, folder: Path) -> list[tuple[str, int, Run, Run]]:
    """(role, seed, training run, evaluation run) of the plain and the distilled student of every seed,
    both initialised from the depth pretraining when there is one; both are evaluated by the plain student
    experiment (a distilled checkpoint is a plain student's)."""
    logs, runs_root = folder / "logs", folder / "runs"
    plain_options = [f"model_size={s.model_size}", *s.exp_options]
    init_options = [f"camera_init={pretrain.checkpoint}"] if pretrain else []
    init_needs = pretrain.needs if pretrain else ()
    distill_options = [*plain_options, f"teacher_model_size={teacher.settings['model_size']}", *s.distill_options]
    students = []
    for seed in s.seeds:
        for role, exp_file, options in (("plain", student_file, plain_options), ("distilled", s.pairing, distill_options)):
            name = f"{role}-seed{seed}"
            teacher_ckpt = teacher.checkpoint if role == "distilled" else None
            train = Run(name, commands.train(exp_file, seed, s.epochs, runs_root, name, [*options, *init_options], True,
                                             teacher_ckpt),
                        logs / f"{name}.log", runs_root / exp_file.stem / name, s.epochs,
                        needs=init_needs + (teacher.needs if teacher_ckpt else ()))
            checkpoint = train.run_dir / "checkpoints" / "last.ckpt"
            evaluate = Run(f"{name}-eval", commands.evaluate(student_file, checkpoint, runs_root, f"{name}-eval", plain_options),
                           logs / f"{name}-eval.log", runs_root / student_file.stem / f"{name}-eval", needs=(name,))
            students.append((role, seed, train, evaluate))
    return students


def student_entry(role: str, seed: int, train: Run, evaluate: Run) -> dict[str, Any]:
    """A finished student's entry in the report: folders, logs, times, `-e` metrics, val/mAP per epoch."""
    return {"role": role, "seed": seed, "experiment": train.run_dir.parent.name, "train_dir": str(train.run_dir),
            "checkpoint": str(train.run_dir / "checkpoints" / "last.ckpt"), "eval_dir": str(evaluate.run_dir),
            "train_seconds": train.seconds, "eval_seconds": evaluate.seconds, "log": str(train.log),
            "eval_log": str(evaluate.log), "metrics": eval_metrics(evaluate.run_dir),
            "val_mAP": val_map_per_epoch(train.run_dir)}


def run_study(s: StudySettings, command: list[str]) -> dict[str, Any]:
    """Run the study (module doc), print its tables and return the report (also in report.json)."""
    start = time.perf_counter()
    s = replace(s, pairing=s.pairing.resolve(), data_root=s.data_root.resolve(), output_root=s.output_root.resolve())
    student_file, teacher_file = pairing_files(s.pairing)
    ensure_data(s)
    folder = s.output_root / s.name / datetime.now().strftime("%Y%m%d-%H%M%S")
    commands = Commands(s)
    logs = folder / "logs"
    teacher = plan_shared(s, commands, "teacher", teacher_file, s.teacher_model_size or s.model_size,
                          s.teacher_epochs, logs, evaluate=True)
    pretrain = plan_camera_pretrain(s, commands, student_file, logs)
    shared = [plan for plan in (teacher, pretrain) if plan is not None]
    for plan in shared:
        plan.announce()
    students = plan_students(s, commands, student_file, teacher, pretrain, folder)
    # the teacher's evaluation last: a slot freed by the teacher goes to a distilled student first
    runs = [plan.train for plan in shared if plan.train]
    runs += [run for *_, train, evaluate in students for run in (train, evaluate)]
    runs += [teacher.evaluate] if teacher.evaluate else []
    print(f"runs' logs: {logs}")
    run_all(runs, device_slots(s.jobs, 2 * len(s.seeds)), desc=s.name)
    for plan in shared:
        plan.finish()

    report = {
        "study": s.name,
        "pairing": s.pairing.stem,
        "command": command,
        "settings": json.loads(json.dumps(asdict(s), default=str)),
        "teacher": {"role": "teacher", "seed": s.teacher_seed, "experiment": teacher_file.stem,
                    "reused": teacher.train is None, "checkpoint": str(teacher.checkpoint),
                    "train_dir": str(teacher.run_dir), "eval_dir": str(teacher.eval_dir),
                    "train_seconds": teacher.record["train_seconds"], "metrics": eval_metrics(teacher.eval_dir)},
        "runs": [student_entry(*student) for student in students],
    }
    if pretrain is not None:
        report["camera_pretrain"] = {"experiment": DEPTH_PRETRAIN_FILE.stem, "epochs": pretrain.settings["epochs"],
                                     "reused": pretrain.train is None, "checkpoint": str(pretrain.checkpoint),
                                     "train_seconds": pretrain.record["train_seconds"]}
    report["summary"] = summarise(report)

    print("predicting one validation sample for the figure ...", flush=True)
    plain, distilled = report["runs"][:2]  # the first seed's
    batch, detections, point_cloud_range = predict_sample(
        student_file, [Path(plain["checkpoint"]), Path(distilled["checkpoint"])], s.data_root,
        [f"model_size={s.model_size}", *s.exp_options, f"version={s.version}"],
    )
    curves = [(run["role"], run["seed"], run["val_mAP"]) for run in report["runs"]]
    figure = save_report_figure(folder / "report.png", curves, batch, dict(zip(("plain", "distilled"), detections, strict=True)),
                                point_cloud_range, s.score_threshold)
    report["wall_seconds"] = time.perf_counter() - start
    json_path, md_path = write_report(report, folder)
    print(format_tables(report))
    print(f"report: {md_path}, {json_path}, {figure}")
    return report
