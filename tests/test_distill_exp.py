"""Distillation experiments: the distiller's terms, the distillation objective's teacher handling and checkpoints, and
every pairing file training on the synthetic nuScenes at the small configuration."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from unikd.benchmarks.distill_step import benchmark_distill_step
from unikd.data.collate import collate_batch
from unikd.distill.distiller import UNIDISTILL_TERMS, Distiller, needs_train_samples
from unikd.distill.losses import TERM_KINDS, DistillTerm, register_term
from unikd.distill.recorder import FeatureRecorder
from unikd.exps.base_exp import BaseExp
from unikd.exps.checkpoints import CheckpointError, load_detector_weights
from unikd.exps.distillation import DISTILLER_STATE_KEY
from unikd.exps.exp_files import load_exp_class
from unikd.models.bevfusion import BEVFusion, SparseFeatures
from unikd.models.configs import model_config
from unikd.models.heads.transfusion_head import TransFusionHead

EXP_DIR = Path(__file__).resolve().parents[1] / "exps" / "nuscenes" / "BEVFusion"
PAIRINGS = {  # file stem -> modalities of the (student, teacher) plain experiment files
    "BEVFusion_nuscenes_centerhead_camera_exp_distill_lidar": ("camera", "lidar"),
    "BEVFusion_nuscenes_centerhead_camera_exp_distill_fusion": ("camera", "fusion"),
    "BEVFusion_nuscenes_centerhead_lidar_exp_distill_camera": ("lidar", "camera"),
    "BEVFusion_nuscenes_centerhead_lidar_exp_distill_fusion": ("lidar", "fusion"),
    "BEVFusion_nuscenes_centerhead_fusion_exp_distill_lidar": ("fusion", "lidar"),
    "BEVFusion_nuscenes_centerhead_lidarsmall_exp_distill_lidar": ("lidar", "lidar"),
}
LIDARSMALL = "BEVFusion_nuscenes_centerhead_lidarsmall_exp_distill_lidar"
SMALL = {"model_size": "small", "num_workers": 0}


def exp_class(stem: str) -> type:
    return load_exp_class(EXP_DIR / f"{stem}.py")


def plain_class(modality: str) -> type:
    return exp_class(f"BEVFusion_nuscenes_centerhead_{modality}_exp")


def make_distill_exp(
    stem: str, root: Path | str = "unused", teacher_ckpt: str | None = None, **options
) -> BaseExp:
    """A pairing at the small configuration; a random teacher unless a checkpoint is given."""
    exp_options = {
        **SMALL,
        "teacher_model_size": "small",
        "allow_random_teacher": teacher_ckpt is None,
        **options,
    }
    return exp_class(stem)(data_root=str(root), exp_options=exp_options, teacher_ckpt=teacher_ckpt)


def training_batches(exp: BaseExp, count: int) -> list[dict]:
    dataset = exp.datamodule.train_dataset()
    return [collate_batch([dataset[i]]) for i in range(count)]


def output_shapes(outputs: dict) -> dict:
    """The shapes `BEVFusion.output_shapes` predicts, read off a forward's outputs (batch size 1)."""
    shapes = {}
    for name, value in outputs.items():
        if isinstance(value, SparseFeatures):
            shapes[name] = (value.features.shape[1],)
        elif name == "backbone":
            shapes[name] = [tuple(level.shape[1:]) for level in value]
        elif name == "head":  # a CenterHead's tasks, or a TransFusionHead's dense heatmap
            heatmap = value["dense_heatmap"] if isinstance(value, dict) else value[0]["heatmap"]
            shapes[name] = tuple(heatmap.shape[-2:])
        elif name in ("middle_encoder", "camera_bev", "bev", "neck"):
            shapes[name] = tuple(value.shape[1:])
    return shapes


def fake_outputs(model: BEVFusion, grad: bool) -> dict:
    """Random outputs with the shapes of `model`'s named outputs (batch size 1), without running it."""
    shapes = model.output_shapes()
    dense = {
        name: shape
        for name, shape in shapes.items()
        if name in ("middle_encoder", "camera_bev", "bev", "neck")
    }
    outputs = {name: torch.randn(1, *shape, requires_grad=grad) for name, shape in dense.items()}
    outputs["backbone"] = [torch.randn(1, *shape, requires_grad=grad) for shape in shapes["backbone"]]
    if "voxel_encoder" in shapes:
        grid = model.voxel_grid
        count = 500
        coords = torch.stack(
            [
                torch.zeros(count, dtype=torch.long),
                torch.randint(0, 4, (count,)),
                torch.randint(0, grid.height, (count,)),
                torch.randint(0, grid.width, (count,)),
            ],
            dim=1,
        )
        outputs["voxel_encoder"] = SparseFeatures(
            torch.randn(count, shapes["voxel_encoder"][0], requires_grad=grad), coords
        )
    outputs["head"] = [
        {
            name: torch.randn(1, channels, *shapes["head"], requires_grad=grad)
            for name, channels in {"heatmap": len(task), **model.head.common_heads}.items()
        }
        for task in model.head.tasks
    ]
    return outputs


BOXES = [
    torch.tensor(
        [[5.0, -10.0, 0.0, 4.0, 2.0, 1.5, 0.3, 0.0, 0.0], [-20.0, 7.0, 0.0, 0.8, 0.7, 1.7, 1.3, 0.0, 0.0]]
    )
]
ALL_KINDS = {
    **UNIDISTILL_TERMS,
    "fitnet": {"kind": "fitnet", "source": "neck"},
    "masked": {"kind": "masked", "source": "bev"},
    "attention": {"kind": "attention", "source": "neck"},
    "heatmap_kd": {"kind": "heatmap_kd", "source": "head", "temperature": 2.0},
    "crd": {"kind": "crd", "source": "neck", "num_negatives": 8},
    "learned_mask": {"kind": "learned_mask", "source": "neck", "num_queries": 2, "mask_learning_until_epoch": 1},
}


# ----------------------------------------------------------------------------- distiller (no data)
@pytest.mark.parametrize(
    ("student_size", "teacher_size"),
    [("small", "small"), ("student", "nuscenes")],
    ids=["same-resolution", "student<-nuscenes"],
)
def test_every_term_kind_is_finite_and_trains_its_adapters(student_size: str, teacher_size: str) -> None:
    torch.manual_seed(0)
    student = BEVFusion(model_config(student_size, ("lidar",)))
    teacher = BEVFusion(model_config(teacher_size, ("lidar",)))
    teacher.requires_grad_(False).eval()
    distiller = Distiller(ALL_KINDS, {name: 1.0 for name in ALL_KINDS}, student, teacher, num_train_samples=20)
    student_out, teacher_out = fake_outputs(student, grad=True), fake_outputs(teacher, grad=False)
    batch = {"gt_boxes": BOXES, "gt_labels": [torch.tensor([0, 8])], "index": torch.tensor([3])}
    losses = distiller(student_out, teacher_out, batch)
    assert set(losses) == {f"distill/{name}" for name in ALL_KINDS} | {"distill/learned_mask/mask_learning"}
    for name, value in losses.items():
        assert value.ndim == 0 and torch.isfinite(value) and value > 0, name
    sum(losses.values()).backward()
    assert student_out["bev"].grad.abs().sum() > 0 and student_out["neck"].grad.abs().sum() > 0
    adapters = [p for name, p in distiller.named_parameters() if "adapter" in name or "projector" in name]
    assert adapters and all(p.grad is not None for p in adapters)
    assert distiller.terms["crd"].embed_student.weight.grad.abs().sum() > 0
    # The masks learn through the frozen teacher head, which itself gets no gradient.
    queries = distiller.terms["learned_mask"].generator.queries
    assert queries.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())
    assert not any(name.startswith("terms.learned_mask.teacher") for name in distiller.state_dict())
    if student_size != teacher_size:  # 135 x 135 student cells onto the 180 x 180 teacher grid
        assert distiller.terms["response"].resize.size == (180, 180)
    distiller.set_epoch(1)  # mask learning stops at `mask_learning_until_epoch`
    assert "distill/learned_mask/mask_learning" not in distiller(student_out, teacher_out, batch)
    assert distiller.terms["learned_mask"].frozen_parameters() == [queries]


def test_distiller_rejects_what_it_cannot_align() -> None:
    camera = BEVFusion(model_config("small", ("camera",)))
    lidar = BEVFusion(model_config("small", ("lidar",)))
    with pytest.raises(KeyError, match="infonce"):
        Distiller(UNIDISTILL_TERMS, {"feature": 1.0, "infnce": 1.0}, camera, lidar)
    with pytest.raises(KeyError, match="voxel_encoder.*student"):
        Distiller(UNIDISTILL_TERMS, {"infonce": 1.0}, camera, lidar)
    with pytest.raises(ValueError, match="different regions"):
        Distiller(UNIDISTILL_TERMS, {"feature": 1.0}, BEVFusion(model_config("student", ("lidar",))), lidar)
    with pytest.raises(ValueError, match="kind must be one of"):
        Distiller({"x": {"kind": "kl", "source": "bev"}}, {"x": 1.0}, camera, lidar)
    with pytest.raises(ValueError, match="'loss' and 'feature' are now 'kind' and 'source'"):
        Distiller({"x": {"loss": "feature", "feature": "bev"}}, {"x": 1.0}, camera, lidar)
    assert not Distiller(UNIDISTILL_TERMS, {"feature": 0.0}, camera, lidar).terms  # weight 0: term off
    with pytest.raises(ValueError, match="num_train_samples"):
        Distiller({"crd": {"kind": "crd", "source": "bev"}}, {"crd": 1.0}, camera, lidar)
    with pytest.raises(ValueError, match="through the teacher's decoder"):
        Distiller({"mask": {"kind": "learned_mask", "source": "middle_encoder"}}, {"mask": 1.0}, lidar, lidar)


def test_kinds_come_from_the_registry_and_specs_are_checked() -> None:
    camera = BEVFusion(model_config("small", ("camera",)))
    lidar = BEVFusion(model_config("small", ("lidar",)))
    assert set(TERM_KINDS) >= {"feature", "relation", "response", "infonce", "heatmap_kd", "crd", "learned_mask"}
    with pytest.raises(ValueError, match="already registered"):
        register_term("feature")(type("Again", (DistillTerm,), {}))
    with pytest.raises(TypeError, match=r"'r' \(response\): options \['radius'\]"):
        Distiller({"r": {"kind": "response", "source": "head", "radius": 1}}, {"r": 1.0}, camera, lidar)
    with pytest.raises(ValueError, match="reads the head outputs"):
        Distiller({"r": {"kind": "response", "source": "neck"}}, {"r": 1.0}, camera, lidar)
    with pytest.raises(ValueError, match="dense BEV output"):
        Distiller({"f": {"kind": "feature", "source": "backbone"}}, {"f": 1.0}, camera, lidar)
    with pytest.raises(ValueError, match="must list named outputs"):
        Distiller({"i": {"kind": "infonce", "source": "neck"}}, {"i": 1.0}, lidar, lidar)
    spec = {"c": {"kind": "crd", "source": "neck"}}
    assert needs_train_samples(spec, {"c": 1.0}) and not needs_train_samples(spec, {"c": 0.0})
    response = Distiller(UNIDISTILL_TERMS, {"response": 1.0}, camera, lidar).terms["response"]
    assert (response.student_temperature, response.teacher_temperature, response.min_radius) == (1.0, 2.0, 0)


# ----------------------------------------------------------------------------- distillation experiments (no data)
def test_load_exp_class_imports_each_file_once(tmp_path: Path) -> None:
    assert plain_class("lidar") is plain_class("lidar")
    assert issubclass(exp_class(LIDARSMALL), plain_class("lidar"))
    with pytest.raises(FileNotFoundError, match="missing_exp.py"):
        load_exp_class(tmp_path / "missing_exp.py")


def test_distill_exp_options_state_dict_and_teacher_mode() -> None:
    exp = make_distill_exp(
        "BEVFusion_nuscenes_centerhead_camera_exp_distill_lidar",
        **{"distill_weights.feature": 50.0, "distill_weights.relation": 0.0},
    )
    assert isinstance(exp, plain_class("camera"))
    assert exp.objective.distiller.weights == {"feature": 50.0, "response": 10.0}
    declared = {"feature": 100.0, "relation": 40.0, "response": 10.0, "infonce": 0.0, "heatmap_kd": 0.0}
    assert type(exp).distill.weights == declared  # class untouched
    assert exp.distill.weights == declared | {"feature": 50.0, "relation": 0.0}
    plain = plain_class("camera")(exp_options=SMALL)
    assert set(exp.state_dict()) == set(plain.state_dict())
    exp.train()
    assert exp.model.training and exp.objective.distiller.training and not exp.objective.teacher.training
    assert not any(module.training for module in exp.objective.teacher.modules())
    trainable = {id(p) for p in exp.trainable_parameters()}
    assert not any(id(p) in trainable for p in exp.objective.teacher.parameters())
    assert all(id(p) in trainable for p in exp.objective.distiller.parameters())


def test_training_without_teacher_checkpoint_is_an_error() -> None:
    exp = exp_class(LIDARSMALL)(exp_options={**SMALL, "teacher_model_size": "small"})
    with pytest.raises(RuntimeError, match="--teacher_ckpt"):
        exp.training_losses({})


def test_teacher_checkpoint_loading_is_strict(tmp_path: Path) -> None:
    teacher_exp = plain_class("lidar")(exp_options=SMALL)
    state = {f"model.{key}": value for key, value in teacher_exp.model.state_dict().items()}
    good = tmp_path / "teacher.ckpt"
    torch.save({"state_dict": state, "epoch": 3}, good)
    exp = make_distill_exp(LIDARSMALL, teacher_ckpt=str(good))
    for key, value in teacher_exp.model.state_dict().items():
        assert torch.equal(exp.objective.teacher.state_dict()[key], value), key

    plain = tmp_path / "detector.pth"  # a plain state dict of the detector loads too
    torch.save(teacher_exp.model.state_dict(), plain)
    load_detector_weights(BEVFusion(model_config("small", ("lidar",))), plain, "a small LiDAR detector")

    some_key = "model.head.shared_conv.0.weight"
    broken = {
        "missing": {k: v for k, v in state.items() if k != some_key},
        "unexpected": {**state, "model.extra.weight": torch.zeros(3)},
        "mis-shaped": {**state, some_key: torch.zeros(2, 2)},
    }
    expected = {
        "missing": "head.shared_conv.0.weight",
        "unexpected": "extra.weight",
        "mis-shaped": r"\(2, 2\)",
    }
    for case, bad_state in broken.items():
        path = tmp_path / f"{case}.ckpt"
        torch.save({"state_dict": bad_state}, path)
        with pytest.raises(RuntimeError, match=f"{case}.*{expected[case]}"):
            make_distill_exp(LIDARSMALL, teacher_ckpt=str(path))
    with pytest.raises(CheckpointError, match="nowhere.ckpt does not exist"):
        make_distill_exp(LIDARSMALL, teacher_ckpt=str(tmp_path / "nowhere.ckpt"))


def test_teacher_checkpoint_of_another_size_is_summarised_by_module(tmp_path: Path) -> None:
    """A mismatch is one short message by module that says what the checkpoint is and which flag loads it."""
    teacher_exp = plain_class("lidar")(exp_options={"model_size": "student", "num_workers": 0})
    checkpoint = {"state_dict": {f"model.{k}": v for k, v in teacher_exp.model.state_dict().items()}}
    teacher_exp.on_save_checkpoint(checkpoint)
    path = tmp_path / "student_size.ckpt"
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError) as error:
        make_distill_exp(LIDARSMALL, teacher_ckpt=str(path))
    message = str(error.value)
    assert len(message) < 2000 and len(message.splitlines()) < 12, message
    assert "head.task_heads" in message and "mis-shaped" in message
    assert "BEVFusion_nuscenes_centerhead_lidar_exp checkpoint (model_size=student" in message
    assert "teacher_model_size=student" in message


# ----------------------------------------------------------------------------- on the synthetic dataset
@pytest.mark.parametrize("stem", sorted(PAIRINGS))
def test_pairing_trains_with_finite_terms(stem: str, synthetic_root: Path) -> None:
    torch.manual_seed(0)
    exp = make_distill_exp(stem, synthetic_root)
    student_modality, teacher_modality = PAIRINGS[stem]
    assert isinstance(exp, plain_class(student_modality))
    assert exp.distill.teacher is plain_class(teacher_modality)
    # Training batches carry what either network reads; evaluation batches only what the student reads.
    modalities = {"lidar": ("lidar",), "camera": ("camera",), "fusion": ("lidar", "camera")}
    uses_camera = {name: "camera" in modalities[name] for name in (student_modality, teacher_modality)}
    assert ("imgs" in exp.datamodule.train_dataset()[0]) == any(uses_camera.values())
    assert ("imgs" in exp.datamodule.val_dataset()[0]) == uses_camera[student_modality]
    trains_with_finite_terms_and_frozen_teacher(exp)


BEVFUSION_PAIRINGS = {  # file stem -> student modality; the teacher is BEVFusion-LC
    "BEVFusion_nuscenes_centerhead_camera_exp_distill_bevfusion": "camera",
    "BEVFusion_nuscenes_centerhead_lidar_exp_distill_bevfusion": "lidar",
}


@pytest.mark.parametrize("stem", sorted(BEVFUSION_PAIRINGS))
def test_bevfusion_pairing_trains_with_finite_terms(stem: str, synthetic_root: Path) -> None:
    """Students of BEVFusion-LC (small_bevfusion: Swin, DepthLSS, TransFusionHead) learn from its fused BEV, neck
    and dense heatmap; its head has no response maps."""
    torch.manual_seed(0)
    exp = make_distill_exp(stem, synthetic_root, teacher_model_size="small_bevfusion")
    assert isinstance(exp, plain_class(BEVFUSION_PAIRINGS[stem]))
    assert exp.distill.teacher is exp_class("BEVFusion_nuscenes_transfusion_fusion_exp")
    assert isinstance(exp.objective.teacher.head, TransFusionHead) and exp.objective.teacher.config["camera"]["depth_net"] == "depth_lss"
    assert {name for name, weight in exp.distill.weights.items() if weight} == {"feature", "relation", "heatmap_kd"}
    trains_with_finite_terms_and_frozen_teacher(exp)


def trains_with_finite_terms_and_frozen_teacher(exp: BaseExp) -> None:
    """Two training steps: every weighted term is finite, the teacher does not change, and the shapes the adapters
    were sized from are those the networks give."""
    teacher_before = {key: value.clone() for key, value in exp.objective.teacher.state_dict().items()}
    optimizer = torch.optim.AdamW(exp.trainable_parameters(), lr=1e-3)
    exp.train()
    for batch in training_batches(exp, 2):
        with FeatureRecorder(exp, ["model", "objective.teacher"]) as recorder:
            losses = exp.training_losses(batch)
        assert {f"distill/{name}" for name, weight in exp.distill.weights.items() if weight} <= set(losses)
        values = {name: value.item() for name, value in losses.items()}
        assert all(math.isfinite(value) for value in values.values()), values
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    for key, value in exp.objective.teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key]), key
    for path, network in (("model", exp.model), ("objective.teacher", exp.objective.teacher)):
        assert output_shapes(recorder[path]) == network.output_shapes()  # the shapes the adapters were sized from


def test_infonce_has_real_negatives_at_batch_size_one(synthetic_root: Path) -> None:
    torch.manual_seed(0)
    exp = make_distill_exp(LIDARSMALL, synthetic_root)
    exp.train()
    term = exp.objective.distiller.terms["infonce"]
    values = []
    for batch in training_batches(exp, 2):
        assert len(batch["gt_boxes"]) == 1
        exp.zero_grad()
        student = exp.model(batch)
        with torch.no_grad():
            teacher = exp.objective.teacher(batch)
        loss = term(student, teacher, batch["gt_boxes"])
        loss.backward()
        values.append(loss.item())
        grads = [p.grad for p in exp.model.middle_encoder.parameters() if p.grad is not None]
        assert grads and sum(g.abs().sum() for g in grads) > 0
    # one positive among the boxes and background samples (and later the queue): far from the constant 0
    # of a single-key InfoNCE, and it changes with the sample.
    assert values[0] > 1.0 and values[0] != values[1]
    assert int(term.queue.count) > 0


class TeacherModeProbe(pl.Callback):
    def __init__(self) -> None:
        self.teacher_modes: list[bool] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.teacher_modes.append(any(m.training for m in pl_module.objective.teacher.modules()))


def tiny_trainer(tmp_path: Path, max_steps: int, **kwargs) -> pl.Trainer:
    kwargs.setdefault("enable_checkpointing", False)
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        default_root_dir=str(tmp_path),
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kwargs,
    )


@pytest.mark.slow
def test_lightning_training_freezes_teacher_and_checkpoints_the_student_only(
    synthetic_root: Path, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    exp = make_distill_exp(LIDARSMALL, synthetic_root)
    teacher_before = {k: v.clone() for k, v in exp.objective.teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in exp.model.state_dict().items()}
    probe = TeacherModeProbe()
    saver = ModelCheckpoint(dirpath=str(tmp_path / "checkpoints"), every_n_train_steps=2, save_top_k=-1)
    trainer = tiny_trainer(
        tmp_path, max_steps=3, limit_val_batches=0, callbacks=[probe, saver], enable_checkpointing=True
    )
    trainer.fit(exp, datamodule=exp.datamodule)
    assert trainer.global_step == 3 and probe.teacher_modes == [False, False, False]
    for key, value in exp.objective.teacher.state_dict().items():  # parameters and BatchNorm statistics
        assert torch.equal(value, teacher_before[key]), key
    changed = [k for k, v in exp.model.state_dict().items() if not torch.equal(v, student_before[k])]
    assert any(k.endswith("weight") for k in changed) and any(k.endswith("running_mean") for k in changed)

    ckpt = tmp_path / "distilled.ckpt"
    trainer.save_checkpoint(ckpt)
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert (
        all(key.startswith("model.") for key in checkpoint["state_dict"])
        and DISTILLER_STATE_KEY in checkpoint
    )

    # The plain student experiment loads it strictly and evaluates it (decode + metric), as `-e` does.
    student = plain_class("lidar")(
        data_root=str(synthetic_root), output_dir=str(tmp_path / "eval"), exp_options=SMALL
    )
    student.load_state_dict(checkpoint["state_dict"], strict=True)
    tiny_trainer(tmp_path, max_steps=1, limit_val_batches=2).validate(
        student, datamodule=student.datamodule, ckpt_path=str(ckpt)
    )
    assert math.isfinite(student.last_metrics["nd_score"])

    # A distillation run resumes: student, distiller (adapters, projectors, queue) and optimizer.
    resumed = make_distill_exp(LIDARSMALL, synthetic_root)
    resumed.on_load_checkpoint(checkpoint)
    resumed.load_state_dict(checkpoint["state_dict"])
    for key, value in exp.objective.distiller.state_dict().items():
        assert torch.equal(resumed.objective.distiller.state_dict()[key], value), key
    with pytest.raises(KeyError, match=DISTILLER_STATE_KEY):
        resumed.on_load_checkpoint({"state_dict": checkpoint["state_dict"]})
    (step2,) = (tmp_path / "checkpoints").glob("*step=2.ckpt")
    trainer = tiny_trainer(tmp_path, max_steps=3, limit_val_batches=0)
    restarted = make_distill_exp(LIDARSMALL, synthetic_root)
    trainer.fit(restarted, datamodule=restarted.datamodule, ckpt_path=str(step2))
    assert trainer.global_step == 3

    # The distilled small LiDAR student is a valid small LiDAR teacher checkpoint (Lightning format).
    teacher_from_ckpt = make_distill_exp(LIDARSMALL, teacher_ckpt=str(ckpt))
    for key, value in teacher_from_ckpt.objective.teacher.state_dict().items():
        assert torch.equal(value, checkpoint["state_dict"][f"model.{key}"]), key


@pytest.mark.slow
def test_benchmark_distill_step(synthetic_root: Path) -> None:
    exp = make_distill_exp(LIDARSMALL, synthetic_root)
    result = benchmark_distill_step(exp, repeats=1)
    timings = {f"{part}_{clock}" for part in ("distill", "student", "teacher") for clock in ("s", "cpu_s")}
    terms = {f"term_{name}_s" for name in exp.objective.distiller.terms}
    assert terms == {"term_feature_s", "term_relation_s", "term_response_s", "term_infonce_s"}
    assert set(result) == timings | terms | {"ratio", "cpu_ratio", "distill_peak_bytes", "student_peak_bytes"}
    assert all(result[name] > 0 for name in terms)
    assert (
        result["ratio"] > 0
        and result["cpu_ratio"] > 0
        and result["distill_peak_bytes"] >= result["student_peak_bytes"] > 0
    )
    assert not exp.objective.teacher.training


@pytest.mark.slow
def test_crd_and_learned_mask_terms_in_training(synthetic_root: Path, tmp_path: Path) -> None:
    """CRD's banks span the training set; learned masks stop learning at their epoch (Lightning's hook)."""
    torch.manual_seed(0)
    terms = {
        "crd": {"kind": "crd", "source": "neck", "num_negatives": 16},
        "mask": {"kind": "learned_mask", "source": "neck", "num_queries": 2, "mask_learning_until_epoch": 1},
    }
    exp = make_distill_exp(
        "BEVFusion_nuscenes_centerhead_camera_exp_distill_lidar",
        synthetic_root,
        distill_terms=terms,
        distill_weights={"crd": 1.0, "mask": 1.0},
    )
    num_train = len(exp.datamodule.train_dataset())
    assert exp.objective.distiller.terms["crd"].memory_student.shape[0] == num_train
    bank_before = exp.objective.distiller.terms["crd"].memory_student.clone()
    queries = exp.objective.distiller.terms["mask"].generator.queries
    queries_before = queries.detach().clone()
    trainer = tiny_trainer(tmp_path, max_steps=2, max_epochs=2, limit_train_batches=1, limit_val_batches=0)
    trainer.fit(exp, datamodule=exp.datamodule)
    assert trainer.current_epoch == 2 and exp.objective.distiller.terms["mask"].frozen_parameters() == [queries]
    assert not torch.equal(queries.detach(), queries_before)  # learned during epoch 0
    changed_rows = (exp.objective.distiller.terms["crd"].memory_student != bank_before).any(dim=1)
    assert int(changed_rows.sum()) == 2 * exp.batch_size_per_device  # one bank row per trained sample


def test_terms_read_submodule_outputs_by_module_path(synthetic_root: Path) -> None:
    """A term on a module path (no named output): hooks record it in both networks."""
    torch.manual_seed(0)
    path, shape = "backbone.stages.0", (64, 64, 64)  # the small config's first SECOND stage
    terms = {"hint": {"kind": "fitnet", "source": path, "shapes": {"student": shape, "teacher": shape}}}
    exp = make_distill_exp(LIDARSMALL, synthetic_root, distill_terms=terms, distill_weights={"hint": 2.0})
    assert exp.objective.distiller.module_paths == [path]
    exp.train()
    (batch,) = training_batches(exp, 1)
    with pytest.raises(RuntimeError, match="recording"):  # the distiller records module paths itself
        exp.objective.distiller({}, {}, batch)
    with FeatureRecorder(exp, ["model", "objective.teacher"]) as recorder:
        losses = exp.training_losses(batch)
    # The recorded stage output is the first backbone level of each network's named outputs.
    term = exp.objective.distiller.terms["hint"]
    expected = 2.0 * term(recorder["model"]["backbone"][0], recorder["objective.teacher"]["backbone"][0])
    torch.testing.assert_close(losses["distill/hint"], expected)
    losses["distill/hint"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in exp.model.backbone.stages[0].parameters())
    with pytest.raises(KeyError, match="not a module path of the student"):
        make_distill_exp(
            LIDARSMALL, distill_terms={"hint": {**terms["hint"], "source": "backbone.nowhere"}}, distill_weights={"hint": 1.0}
        )
    with pytest.raises(KeyError, match="needs the term's 'shapes'"):
        make_distill_exp(LIDARSMALL, distill_terms={"hint": {"kind": "fitnet", "source": path}}, distill_weights={"hint": 1.0})


def test_a_declared_term_off_by_default_is_switched_on_by_its_weight() -> None:
    """The camera <- LiDAR pairing declares heatmap_kd with no weight: `distill_weights.heatmap_kd` turns it on."""
    exp = make_distill_exp("BEVFusion_nuscenes_centerhead_camera_exp_distill_lidar", **{"distill_weights.heatmap_kd": 50.0})
    assert exp.objective.distiller.weights == {"feature": 100.0, "relation": 40.0, "response": 10.0, "heatmap_kd": 50.0}
    assert exp.objective.distiller.terms["heatmap_kd"].mode == "bce"
    assert "heatmap_kd" not in make_distill_exp("BEVFusion_nuscenes_centerhead_camera_exp_distill_lidar").objective.distiller.terms
