"""The study engine: for a pairing (a distillation experiment file, which names its student and
teacher experiments), train the teacher (or reuse a finished one with the same settings), the plain
student and the distilled students of every variant (`unikd.study.variants`; one without variants) for
every seed on the same schedule, evaluate all of them with `-e`, and write
outputs/<name>/<timestamp>/report.{json,md,png}: the paired difference distilled - plain per seed, per
variant (`unikd.study.paired`).

Every run is a subprocess of an experiment file (`unikd.study.runs`), with its own run folder and a
log under the report folder's logs/. Students validate every epoch (the mAP curve of the report);
the teacher does not (its `-e` evaluates it). The teacher, the depth pretraining and the plain students
are shared runs (`unikd.study.records`) in <output_root>/teachers/, camera_pretrains/ and plain_students/,
reused by every variant and by every later study of that output root with the same settings.
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
from unikd.exps.exp_files import load_exp_class
from unikd.study.figures import predict_sample, save_report_figure
from unikd.study.records import claim_run, read_record, release_run, shared_run_name, write_record
from unikd.study.report import compare_variants, format_tables, summarise, write_report
from unikd.study.results import eval_metrics, val_map_per_epoch
from unikd.study.runs import Run, device_slots, run_all
from unikd.study.variants import DEFAULT_NAME, Variant, VariantError, check_options, parse_variant

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
    # an ablation: each text a variant of the distilled students (`unikd.study.variants`), its options after
    # distill_options; every variant shares the teacher, the depth pretraining and the plain students
    variants: tuple[str, ...] = ()
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
    if exp_class.distill is None:
        raise ValueError(f"{pairing} is not a distillation experiment (its class sets no `distill`)")
    student = next(c for c in exp_class.__mro__[1:] if issubclass(c, BaseExp) and c.distill is None)
    return Path(inspect.getfile(student)).resolve(), Path(inspect.getfile(exp_class.distill.teacher)).resolve()


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
    """A run that studies share (a teacher, a depth pretraining, a plain student): its settings and folders, and
    either the record of a finished run with those settings (reused) or the runs that train (and evaluate) it."""

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

    @property
    def runs(self) -> list[Run]:
        """The runs this study gives it (none when reused)."""
        return [run for run in (self.train, self.evaluate) if run is not None]

    def announce(self) -> None:
        if self.record is not None:
            print(f"{self.name}: reusing {self.checkpoint} (same settings, finished {self.record['finished']})")
        else:
            print(f"{self.name}: training {self.settings['experiment']} in {self.run_dir}")

    def finish(self) -> None:
        """Record a run this study trained once its runs are done (a later failure of the study keeps it)."""
        if self.record is None and all(run.seconds is not None for run in self.runs):
            logs = {run.name: str(run.log) for run in self.runs}
            eval_seconds = self.evaluate.seconds if self.evaluate else None
            self.record = write_record(self.run_dir, self.settings, self.checkpoint, self.train.seconds, self.eval_dir,
                                       eval_seconds, logs)
            release_run(self.run_dir)


def shared_settings(s: StudySettings, exp_file: Path, size: str, epochs: int, seed: int) -> dict[str, Any]:
    """What identifies a shared run: experiment, model size, epochs, seed, data, batches, options."""
    return {"experiment": exp_file.stem, "model_size": size, "epochs": epochs, "seed": seed,
            "data_root": str(s.data_root), "version": s.version, "batch_size": s.batch_size,
            "limit_train_batches": s.limit_train_batches, "exp_options": list(s.exp_options)}


def plan_shared(s: StudySettings, commands: Commands, name: str, kind: str, exp_file: Path, settings: dict[str, Any],
                logs: Path, evaluate: bool, validate: bool = False, init_options: tuple[str, ...] = (),
                needs: tuple[str, ...] = ()) -> SharedPlan:
    """Reuse the finished run of `settings` in <output_root>/<kind>s/<experiment>/, else plan its runs, named
    `name`, in a fresh folder: training (validating every epoch if `validate`; `init_options` and `needs` for
    its initialisation), and `-e` if `evaluate`."""
    root = s.output_root / f"{kind}s"
    run_name = shared_run_name(kind, settings)
    run_dir = root / exp_file.stem / run_name
    eval_dir = root / exp_file.stem / f"{run_name}-eval" if evaluate else None
    plan = SharedPlan(name, settings, run_dir, eval_dir, read_record(run_dir, settings))
    if plan.record is not None:
        return plan
    claim_run(run_dir)
    for folder in (run_dir, eval_dir):  # an unfinished earlier attempt
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
    options = [f"model_size={settings['model_size']}", *s.exp_options]
    epochs, seed = settings["epochs"], settings["seed"]
    plan.train = Run(name, commands.train(exp_file, seed, epochs, root, run_name, [*options, *init_options], validate),
                     logs / f"{name}.log", run_dir, epochs, needs=needs)
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
    settings = shared_settings(s, DEPTH_PRETRAIN_FILE, s.model_size, epochs, s.teacher_seed)
    return plan_shared(s, commands, "camera_pretrain", "camera_pretrain", DEPTH_PRETRAIN_FILE, settings, logs,
                       evaluate=False)


def plan_plain(s: StudySettings, commands: Commands, student_file: Path, seed: int, pretrain: SharedPlan | None,
               logs: Path) -> SharedPlan:
    """The plain student of a seed: a shared run in <output_root>/plain_students/, identified by its settings
    (those of `shared_settings`, the validation batches and the depth pretraining it starts from), so that
    every variant of the study and every later study with the same settings reuses it."""
    settings = shared_settings(s, student_file, s.model_size, s.epochs, seed) | {
        "limit_val_batches": s.limit_val_batches, "camera_init": pretrain.run_dir.name if pretrain else None}
    init_options = (f"camera_init={pretrain.checkpoint}",) if pretrain else ()
    return plan_shared(s, commands, f"plain-seed{seed}", "plain_student", student_file, settings, logs, evaluate=True,
                       validate=True, init_options=init_options, needs=pretrain.needs if pretrain else ())


def distill_options(s: StudySettings, teacher: SharedPlan) -> list[str]:
    """Options of every distilled student, before its variant's."""
    return [f"model_size={s.model_size}", *s.exp_options, f"teacher_model_size={teacher.settings['model_size']}",
            *s.distill_options]


def study_variants(s: StudySettings, pairing_class: type[BaseExp], teacher_size: str) -> list[Variant]:
    """The study's variants (one of no options without `variants`), the distilled students' options and
    each variant's checked by building the distillation experiment with them."""
    variants = [parse_variant(text, pairing_class) for text in s.variants] or [Variant(DEFAULT_NAME, ())]
    names = [variant.name for variant in variants]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise VariantError(f"--variants: {repeated} given more than once")
    options = [f"model_size={s.model_size}", *s.exp_options, f"teacher_model_size={teacher_size}", *s.distill_options,
               f"version={s.version}"]
    check_options("--distill_options", pairing_class, options, s.data_root)
    for variant in variants:
        if variant.options:
            check_options(f"--variants {variant.name!r}", pairing_class, [*options, *variant.options], s.data_root)
    return variants


@dataclass
class StudyPlan:
    """The runs of a study: the shared teacher, depth pretraining and plain students (one per seed), and the
    distilled students, (variant, seed, training run, evaluation run) per variant and seed."""

    teacher: SharedPlan
    pretrain: SharedPlan | None
    plain: dict[int, SharedPlan]
    distilled: list[tuple[Variant, int, Run, Run]]

    @property
    def shared(self) -> list[SharedPlan]:
        return [plan for plan in (self.teacher, self.pretrain, *self.plain.values()) if plan is not None]

    def runs(self) -> list[Run]:
        """Every run to do, in the order slots take them: the teacher's and the pretraining's training, each
        seed's students, and the teacher's evaluation last (a slot freed by the teacher goes to a student)."""
        runs = [plan.train for plan in (self.teacher, self.pretrain) if plan is not None and plan.train]
        for seed, plain in self.plain.items():
            runs += plain.runs
            runs += [run for _, k, train, evaluate in self.distilled if k == seed for run in (train, evaluate)]
        return runs + ([self.teacher.evaluate] if self.teacher.evaluate else [])


def plan_study(s: StudySettings, variants: list[Variant], student_file: Path, teacher_file: Path,
               folder: Path) -> StudyPlan:
    """Plan (or reuse) the shared runs and plan the distilled students of every variant and seed, all
    initialised from the depth pretraining when there is one; every student is evaluated by the plain
    student experiment (a distilled checkpoint is a plain student's)."""
    commands = Commands(s)
    logs, runs_root = folder / "logs", folder / "runs"
    teacher_size = s.teacher_model_size or s.model_size
    teacher = plan_shared(s, commands, "teacher", "teacher", teacher_file,
                          shared_settings(s, teacher_file, teacher_size, s.teacher_epochs, s.teacher_seed), logs,
                          evaluate=True)
    pretrain = plan_camera_pretrain(s, commands, student_file, logs)
    plain = {seed: plan_plain(s, commands, student_file, seed, pretrain, logs) for seed in s.seeds}
    eval_options = [f"model_size={s.model_size}", *s.exp_options]
    init_options = [f"camera_init={pretrain.checkpoint}"] if pretrain else []
    needs = (pretrain.needs if pretrain else ()) + teacher.needs
    distilled = []
    for index, variant in enumerate(variants):
        prefix = "distilled" if len(variants) == 1 else f"distilled-v{index}"
        for seed in s.seeds:
            name = f"{prefix}-seed{seed}"
            options = [*distill_options(s, teacher), *variant.options, *init_options]
            train = Run(name, commands.train(s.pairing, seed, s.epochs, runs_root, name, options, True, teacher.checkpoint),
                        logs / f"{name}.log", runs_root / s.pairing.stem / name, s.epochs, needs=needs)
            checkpoint = train.run_dir / "checkpoints" / "last.ckpt"
            evaluate = Run(f"{name}-eval", commands.evaluate(student_file, checkpoint, runs_root, f"{name}-eval", eval_options),
                           logs / f"{name}-eval.log", runs_root / student_file.stem / f"{name}-eval", needs=(name,))
            distilled.append((variant, seed, train, evaluate))
    return StudyPlan(teacher, pretrain, plain, distilled)


def plain_entry(seed: int, plan: SharedPlan) -> dict[str, Any]:
    """A plain student's entry in the report, from its record (trained by this study or reused)."""
    record = plan.record
    return {"role": "plain", "variant": None, "seed": seed, "experiment": plan.run_dir.parent.name,
            "reused": plan.train is None, "train_dir": str(plan.run_dir), "checkpoint": str(plan.checkpoint),
            "eval_dir": str(plan.eval_dir), "train_seconds": record["train_seconds"],
            "eval_seconds": record["eval_seconds"], "log": record["logs"][plan.name],
            "eval_log": record["logs"][f"{plan.name}-eval"], "metrics": eval_metrics(plan.eval_dir),
            "val_mAP": val_map_per_epoch(plan.run_dir)}


def distilled_entry(variant: Variant, seed: int, train: Run, evaluate: Run) -> dict[str, Any]:
    """A distilled student's entry in the report: folders, logs, times, `-e` metrics, val/mAP per epoch."""
    return {"role": "distilled", "variant": variant.name, "seed": seed, "experiment": train.run_dir.parent.name,
            "reused": False, "train_dir": str(train.run_dir), "checkpoint": str(train.run_dir / "checkpoints" / "last.ckpt"),
            "eval_dir": str(evaluate.run_dir), "train_seconds": train.seconds, "eval_seconds": evaluate.seconds,
            "log": str(train.log), "eval_log": str(evaluate.log), "metrics": eval_metrics(evaluate.run_dir),
            "val_mAP": val_map_per_epoch(train.run_dir)}


def run_study(s: StudySettings, command: list[str]) -> dict[str, Any]:
    """Run the study (module doc), print its tables and return the report (also in report.json)."""
    start = time.perf_counter()
    s = replace(s, pairing=s.pairing.resolve(), data_root=s.data_root.resolve(), output_root=s.output_root.resolve())
    student_file, teacher_file = pairing_files(s.pairing)
    ensure_data(s)
    variants = study_variants(s, load_exp_class(s.pairing), s.teacher_model_size or s.model_size)
    folder = s.output_root / s.name / datetime.now().strftime("%Y%m%d-%H%M%S")
    plan = plan_study(s, variants, student_file, teacher_file, folder)
    for shared in plan.shared:
        shared.announce()
    print(f"runs' logs: {folder / 'logs'}")

    def finish_shared(_: Run) -> None:
        for shared in plan.shared:
            shared.finish()

    runs = plan.runs()
    run_all(runs, device_slots(s.jobs, 2 * len(s.seeds)), desc=s.name, on_done=finish_shared)

    teacher, pretrain = plan.teacher, plan.pretrain
    report = {
        "study": s.name,
        "pairing": s.pairing.stem,
        "command": command,
        "settings": json.loads(json.dumps(asdict(s), default=str)),
        "teacher": {"role": "teacher", "seed": s.teacher_seed, "experiment": teacher_file.stem,
                    "reused": teacher.train is None, "checkpoint": str(teacher.checkpoint),
                    "train_dir": str(teacher.run_dir), "eval_dir": str(teacher.eval_dir),
                    "train_seconds": teacher.record["train_seconds"], "metrics": eval_metrics(teacher.eval_dir)},
        "distill_options": distill_options(s, teacher),
        "runs": [plain_entry(seed, plan.plain[seed]) for seed in s.seeds]
        + [distilled_entry(*distilled) for distilled in plan.distilled],
    }
    if pretrain is not None:
        report["camera_pretrain"] = {"experiment": DEPTH_PRETRAIN_FILE.stem, "epochs": pretrain.settings["epochs"],
                                     "reused": pretrain.train is None, "checkpoint": str(pretrain.checkpoint),
                                     "train_seconds": pretrain.record["train_seconds"]}
    report["variants"] = compare_variants(report["runs"], [(variant.name, list(variant.options)) for variant in variants])
    report["summary"] = summarise(report)

    print("predicting one validation sample for the figure ...", flush=True)
    first_seed, first_variant = s.seeds[0], variants[0].name
    plain_run = next(run for run in report["runs"] if run["role"] == "plain" and run["seed"] == first_seed)
    distilled_run = next(run for run in report["runs"] if run["variant"] == first_variant and run["seed"] == first_seed)
    batch, detections, point_cloud_range = predict_sample(
        student_file, [Path(plain_run["checkpoint"]), Path(distilled_run["checkpoint"])], s.data_root,
        [f"model_size={s.model_size}", *s.exp_options, f"version={s.version}"],
    )
    curves = [(run["role"], run["variant"] or "plain", run["seed"], run["val_mAP"]) for run in report["runs"]]
    figure = save_report_figure(folder / "report.png", curves, report["variants"], batch,
                                dict(zip(("plain", "distilled"), detections, strict=True)), first_variant,
                                point_cloud_range, s.score_threshold)
    report["wall_seconds"] = time.perf_counter() - start
    json_path, md_path = write_report(report, folder)
    print(format_tables(report))
    print(f"report: {md_path}, {json_path}, {figure}")
    return report
