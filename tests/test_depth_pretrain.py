"""Depth pretraining of the camera branch and `camera_init`, which starts a camera detector from it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from unikd.data.collate import collate_batch
from unikd.exps.checkpoints import CAMERA_INIT_PARTS, CheckpointError
from unikd.exps.depth_pretrain_exp import CameraDepthPretrainExp
from unikd.exps.exp_files import load_exp_class
from unikd.models.camera.depth_loss import depth_loss

EXPS = Path(__file__).resolve().parents[1] / "exps" / "nuscenes" / "BEVFusion"
CameraExp = load_exp_class(EXPS / "BEVFusion_nuscenes_centerhead_camera_exp.py")
LidarExp = load_exp_class(EXPS / "BEVFusion_nuscenes_centerhead_lidar_exp.py")


def pretrain_exp(root: Path, **options) -> CameraDepthPretrainExp:
    return CameraDepthPretrainExp(data_root=str(root), exp_options={"model_size": "small", **options})


def one_batch(exp, root: Path, indices=(2, 5)) -> dict:
    dataset = exp.datamodule.dataset("mini_train", training=False)
    return collate_batch([dataset[i] for i in indices])


def test_image_depth_is_the_forward_depth(synthetic_root):
    torch.manual_seed(0)
    exp = pretrain_exp(synthetic_root)
    batch = one_batch(exp, synthetic_root)
    camera = exp.model.camera.eval()
    matrices = (batch["lidar2cam"], batch["cam2img"], batch["img_aug"], batch["bda"])
    with torch.no_grad():
        full = camera(batch["imgs"], *matrices).depth_probs
        alone = camera.image_depth(batch["imgs"], *matrices)
    assert alone.shape == full.shape == (2, 6, 59, 16, 44)
    torch.testing.assert_close(alone, full, rtol=0, atol=0)


def test_pretraining_learns_depth_and_validation_counts_cells(synthetic_root):
    torch.manual_seed(0)
    exp = pretrain_exp(synthetic_root)
    batch = one_batch(exp, synthetic_root)
    optimizer = torch.optim.AdamW(exp.model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss = exp.training_losses(batch)["depth"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]
    # what trains is what camera_init loads, and every trained parameter gets a gradient (data-parallel needs it)
    trained = {name for name, parameter in exp.model.camera.named_parameters() if parameter.requires_grad}
    assert trained == {name for name, _ in exp.model.camera.named_parameters() if name.startswith(CAMERA_INIT_PARTS)}
    assert trained and all(p.grad is not None for n, p in exp.model.camera.named_parameters() if n in trained)
    assert len(exp.trainable_parameters()) == len(trained)

    exp.model.eval()
    exp.on_validation_epoch_start()
    with torch.no_grad():
        exp.validation_step(batch, 0)
        probs, targets = exp.model.depth_probs_and_targets(batch)
    # the same counts by a loop over the feature cells
    cells = exact = within_one = 0
    predicted = probs.argmax(dim=2)
    for b, n, i, j in (targets >= 0).nonzero().tolist():
        cells += 1
        error = abs(int(predicted[b, n, i, j]) - int(targets[b, n, i, j]))
        exact += error == 0
        within_one += error <= 1
    loss_sum, counted, counted_exact, counted_one = exp.evaluation.sums.tolist()
    assert (counted, counted_exact, counted_one) == (cells, exact, within_one)
    assert cells > 500 and 0 < exact < within_one <= cells
    assert loss_sum / counted == pytest.approx(float(depth_loss(probs, targets)), rel=1e-6)


def save_pretrained(exp, path: Path) -> Path:
    torch.save({"state_dict": exp.state_dict()}, path)
    return path


def test_camera_init_loads_the_pretrained_parts_only(synthetic_root, tmp_path):
    torch.manual_seed(1)
    pretrained = pretrain_exp(synthetic_root)
    path = save_pretrained(pretrained, tmp_path / "pretrained.ckpt")
    torch.manual_seed(2)
    fresh = CameraExp(data_root=str(synthetic_root), exp_options={"model_size": "small"})
    torch.manual_seed(2)
    started = CameraExp(data_root=str(synthetic_root), exp_options={"model_size": "small", "camera_init": str(path)})
    source = pretrained.model.camera.state_dict()
    own = fresh.model.state_dict()
    loaded_parts = 0
    for key, value in started.model.state_dict().items():
        camera_key = key.removeprefix("camera.")
        if key.startswith("camera.") and camera_key.startswith(CAMERA_INIT_PARTS):
            assert torch.equal(value, source[camera_key]), key
            loaded_parts += 1
        else:  # the splat's downsampling, the decoder and the head keep their own initialisation
            assert torch.equal(value, own[key]), key
    assert loaded_parts > 50
    downsample = next(k for k in source if k.startswith("view_transform.downsample") and k.endswith("weight"))
    assert not torch.equal(started.model.camera.state_dict()[downsample], source[downsample])


def test_camera_init_refuses_what_does_not_fit(synthetic_root, tmp_path):
    path = save_pretrained(pretrain_exp(synthetic_root), tmp_path / "pretrained.ckpt")
    with pytest.raises(ValueError, match="initialises a camera branch"):
        LidarExp(data_root=str(synthetic_root), exp_options={"model_size": "small", "camera_init": str(path)})
    wider = {"model_size": "small", "model_config.camera.neck_channels": 48, "camera_init": str(path)}
    with pytest.raises(CheckpointError, match=r"mis-shaped \(e\.g\. model\.camera\.neck"):
        CameraExp(data_root=str(synthetic_root), exp_options=wider)
    lidar = save_pretrained(LidarExp(data_root=str(synthetic_root), exp_options={"model_size": "small"}), tmp_path / "lidar.ckpt")
    with pytest.raises(CheckpointError, match="keys missing"):
        CameraExp(data_root=str(synthetic_root), exp_options={"model_size": "small", "camera_init": str(lidar)})
    with pytest.raises(CheckpointError, match="does not exist"):
        CameraExp(data_root=str(synthetic_root), exp_options={"model_size": "small", "camera_init": str(tmp_path / "no.ckpt")})
