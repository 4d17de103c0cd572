"""`--exp_options channels_last=True`: the convolution weights of the student, the teacher and the adapters are in
channels-last memory format, the losses and gradients are those of the default (contiguous) experiment to float
rounding (compared in float64), and its checkpoints load into a default experiment (reference: the same experiment
built without it)."""

from __future__ import annotations

from pathlib import Path

import torch

from unikd.data.collate import collate_batch
from unikd.exps.cli import run_cli
from unikd.exps.exp_files import load_exp_class

EXP_DIR = Path(__file__).resolve().parents[1] / "exps/nuscenes/BEVFusion"
SMALL = {"model_size": "small", "num_workers": 0}


def build(exp_name: str, root: Path, **options: object):
    torch.manual_seed(3)
    return load_exp_class(EXP_DIR / f"{exp_name}.py")(data_root=str(root), exp_options={**SMALL, **options})


def four_dim_weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p for name, p in module.named_parameters() if p.dim() == 4}


def as_double(value: object) -> object:
    if isinstance(value, torch.Tensor):
        return value.double() if value.is_floating_point() else value
    if isinstance(value, dict):
        return {key: as_double(item) for key, item in value.items()}
    if isinstance(value, list):
        return [as_double(item) for item in value]
    return value


def test_channels_last_converts_the_student_the_teacher_and_the_adapters(synthetic_root: Path) -> None:
    pairing = "BEVFusion_nuscenes_centerhead_fusion_exp_distill_lidar"
    options = {"teacher_model_size": "small", "allow_random_teacher": True}
    reference = build(pairing, synthetic_root, **options)
    converted = build(pairing, synthetic_root, channels_last=True, **options)
    for part in ("model", "objective"):  # the student; the teacher and the distiller's adapters
        weights = four_dim_weights(getattr(converted, part))
        assert len(weights) > 10
        assert all(w.is_contiguous(memory_format=torch.channels_last) for w in weights.values()), part
        assert all(w.is_contiguous() for w in four_dim_weights(getattr(reference, part)).values()), part
    converted_state = converted.state_dict()
    for name, value in reference.state_dict().items():
        assert torch.equal(converted_state[name], value), name
    sparse = [p for p in converted.model.parameters() if p.dim() == 5]
    assert sparse and all(p.is_contiguous() for p in sparse)  # spconv's 5D weights keep their layout


def float_leaves(value: object) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value] if value.is_floating_point() else []
    if isinstance(value, dict):
        return [leaf for key in sorted(value) for leaf in float_leaves(value[key])]
    if isinstance(value, list | tuple):
        return [leaf for item in value for leaf in float_leaves(item)]
    return []


def test_channels_last_outputs_and_gradients_equal_the_default_in_float64(synthetic_root: Path) -> None:
    """In float64 the two layouts differ only by rounding (1e-14): every output of the camera detector (depth,
    BEV, head) and the gradient of every weight for a fixed random weighting of the outputs. (In float32, rounding
    differences grow through the network to about 1e-4 of a loss.)"""
    name = "BEVFusion_nuscenes_centerhead_camera_exp"
    reference, converted = build(name, synthetic_root), build(name, synthetic_root, channels_last=True)
    dataset = reference.datamodule.train_dataset()
    batch = as_double(collate_batch([dataset[5], dataset[2]]))
    results = []
    for exp in (reference, converted):
        exp.double().train()
        outputs = float_leaves(exp.model(batch))
        generator = torch.Generator().manual_seed(1)
        weighted = sum((leaf * torch.randn(leaf.shape, generator=generator, dtype=leaf.dtype)).sum() for leaf in outputs)
        weighted.backward()
        grads = {key: p.grad for key, p in exp.model.named_parameters() if p.grad is not None}
        results.append(([leaf.detach() for leaf in outputs], grads))
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in four_dim_weights(converted.model).values())
    (ref_outputs, ref_grads), (outputs, grads) = results
    assert len(outputs) == len(ref_outputs) > 5
    for output, ref in zip(outputs, ref_outputs, strict=True):
        torch.testing.assert_close(output, ref, rtol=1e-9, atol=1e-11 * max(1.0, float(ref.abs().max())))
    assert set(grads) == set(ref_grads) and len(grads) > 50
    for key, grad in ref_grads.items():
        torch.testing.assert_close(grads[key], grad, rtol=1e-7, atol=1e-10 * max(1.0, float(grad.abs().max())))


def test_a_channels_last_run_saves_a_checkpoint_that_a_default_experiment_evaluates(
    synthetic_root: Path, tmp_path: Path
) -> None:
    exp_class = load_exp_class(EXP_DIR / "BEVFusion_nuscenes_centerhead_camera_exp.py")
    common = ["--data_root", str(synthetic_root), "--output_root", str(tmp_path), "--no_progress_bar", "-b", "1"]
    trained = run_cli(exp_class, [*common, "--max_epochs", "1", "--limit_train_batches", "2", "--limit_val_batches",
                                  "1", "--exp_options", "model_size=small", "num_workers=0", "channels_last=True"])
    checkpoint = trained.output_dir / "checkpoints/last.ckpt"
    state = torch.load(checkpoint, weights_only=False)["state_dict"]
    evaluated = run_cli(exp_class, [*common, "-e", "--ckpt_path", str(checkpoint), "--limit_val_batches", "1",
                                    "--exp_options", "model_size=small", "num_workers=0"])
    assert not evaluated.channels_last
    for name, value in evaluated.state_dict().items():
        assert torch.equal(value, state[name]), name
    assert evaluated.checkpoint_epoch == 0
