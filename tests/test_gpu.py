"""On a CUDA device (`pytest -m gpu`, tools/gpu_check.sh; skipped without one): spconv on CUDA against its CPU
result, a training step per modality under 16-mixed with finite losses and gradients, the distillation terms
on the input's device, and the host syncs of a training step (`torch.cuda.set_sync_debug_mode("warn")`)."""

from __future__ import annotations

import json
import os
import warnings
from collections import Counter
from pathlib import Path

import pytest
import torch
from test_sparse_encoder import SMALL, random_sites

from unikd.data.collate import collate_batch
from unikd.exps.exp_files import load_exp_class
from unikd.models.lidar import SparseEncoder

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

EXP_DIR = Path(__file__).resolve().parents[1] / "exps/nuscenes/BEVFusion"
EXPS = {
    "lidar": "BEVFusion_nuscenes_centerhead_lidar_exp.py",
    "camera": "BEVFusion_nuscenes_centerhead_camera_exp.py",
    "fusion": "BEVFusion_nuscenes_centerhead_fusion_exp.py",
    "camera_from_lidar": "BEVFusion_nuscenes_centerhead_camera_exp_distill_lidar.py",
}
REPORT = os.environ.get("UNIKD_GPU_REPORT")  # tools/gpu_check.sh collects the figures here


def report(key: str, value: object) -> None:
    if REPORT:
        path = Path(REPORT)
        figures = json.loads(path.read_text()) if path.is_file() else {}
        path.write_text(json.dumps({**figures, key: value}, indent=1))


def to_cuda(value):
    if isinstance(value, torch.Tensor):
        return value.cuda(non_blocking=True)
    if isinstance(value, dict):
        return {key: to_cuda(item) for key, item in value.items()}
    if isinstance(value, list):
        return [to_cuda(item) for item in value]
    return value


def experiment(name: str, root: Path):
    exp_class = load_exp_class(EXP_DIR / EXPS[name])
    options = {"model_size": "small", "num_sweeps": 1}
    if exp_class.distill is not None:  # a randomly initialised teacher: the step, not the result
        return exp_class(data_root=str(root), exp_options={**options, "allow_random_teacher": True}, teacher_ckpt=None)
    return exp_class(data_root=str(root), exp_options=options)


def test_spconv_cuda_matches_cpu() -> None:
    torch.manual_seed(0)
    encoder = SparseEncoder(in_channels=4, **SMALL).eval()
    coords = random_sites(encoder.sparse_shape, batch_size=2, count=2000, seed=1)
    features = torch.randn(2000, 4)
    with torch.no_grad():
        on_cpu = encoder(features, coords, 2)
        on_cuda = encoder.cuda()(features.cuda(), coords.cuda(), 2)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            in_bf16 = encoder(features.cuda(), coords.cuda(), 2)
    torch.testing.assert_close(on_cuda.cpu(), on_cpu, rtol=1e-3, atol=1e-3)
    assert in_bf16.dtype == torch.float32  # bf16-mixed: spconv in float32, not float16 without a scaler
    torch.testing.assert_close(in_bf16.cpu(), on_cpu, rtol=1e-3, atol=1e-3)
    encoder.cpu()(features, coords, 2)  # back on the CPU: Native again


def training_step(exp, batch: dict) -> dict[str, torch.Tensor]:
    scaler = torch.amp.GradScaler("cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        losses = exp.training_losses(batch)
    scaler.scale(sum(losses.values())).backward()
    return losses


@pytest.mark.parametrize("name", ["lidar", "camera", "fusion", "camera_from_lidar"])
def test_training_step_in_16_mixed(synthetic_root: Path, name: str) -> None:
    torch.manual_seed(0)
    exp = experiment(name, synthetic_root).cuda().train()
    dataset = exp.datamodule.train_dataset()
    batch = to_cuda(collate_batch([dataset[0], dataset[1]]))
    losses = training_step(exp, batch)
    assert losses and all(torch.isfinite(value) for value in losses.values()), losses
    assert all(value.device.type == "cuda" for value in losses.values())  # the terms keep to the input's device
    grads = [p.grad for p in exp.parameters() if p.grad is not None]
    assert grads and all(g.device.type == "cuda" for g in grads)

    exp.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            training_step(exp, batch)
            torch.cuda.synchronize()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    sources = Counter(f"{Path(w.filename).name}:{w.lineno}" for w in syncs)
    report(f"host_syncs_{name}", {"count": len(syncs), "sources": dict(sources.most_common(20))})
    print(f"{name}: {len(syncs)} host syncs in a training step; {sources.most_common(10)}")
