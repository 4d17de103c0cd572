"""The checkpoint-format registry: recognition order, a format added by one registration, the error."""

import pytest
import torch

from unikd.interop import (
    FORMATS,
    CheckpointFormatError,
    checkpoint_modalities,
    detector_state,
    is_unikd_checkpoint,
)
from unikd.interop.formats import CheckpointFormat, register_format


def test_registered_order_puts_unikd_last():
    names = list(FORMATS)
    assert names[-2:] == ["unikd", "unikd_detector_state"]
    assert {"unidistill", "mmdet3d_centerpoint", "bevfusion"} <= set(names[:-2])


def test_unidistill_lightning_checkpoint_is_not_taken_for_unikd():
    """Both have `model.*` keys; UniDistill's own roots decide."""
    tensor = torch.zeros(1)
    uni = {"state_dict": {"model.det_head.dense_head.x.weight": tensor, "model.bev_encoder.backbone_2d.y": tensor}}
    ours = {"state_dict": {"model.voxel_encoder.w": tensor, "model.camera.backbone.w": tensor}}
    assert not is_unikd_checkpoint(uni)
    assert is_unikd_checkpoint(ours)
    assert checkpoint_modalities(ours) == ("camera", "lidar")


def test_a_new_format_is_one_registration(monkeypatch: pytest.MonkeyPatch):
    """An alias format (keys under `net.`) converts by stripping its prefix."""
    monkeypatch.setattr(FORMATS, "_choices", dict(FORMATS._choices))  # the registry as it is, restored afterwards
    weight = torch.arange(6.0).reshape(2, 3)
    alias = CheckpointFormat(
        name="test_alias",
        looks_for="keys under net.",
        recognise=lambda checkpoint, state: all(k.startswith("net.") for k in state) and bool(state),
        to_unikd=lambda c: ({k.removeprefix("net."): v for k, v in c.state.items()}, "alias"),
        preset=lambda checkpoint, state: "small",
        modalities=lambda checkpoint, state: ("lidar",),
    )
    register_format(alias)
    state, described = detector_state({"net.head.w": weight}, expected={})
    assert described == "alias" and torch.equal(state["head.w"], weight)
    with pytest.raises(ValueError, match="checkpoint format 'test_alias' is already registered"):
        register_format(alias)


def test_unknown_format_lists_what_each_format_looks_for():
    with pytest.raises(CheckpointFormatError) as error:
        detector_state({"encoder.layer.weight": torch.zeros(1)}, expected={})
    message = str(error.value)
    assert "encoder.layer.weight" in message
    for checkpoint_format in FORMATS.values():
        assert f"{checkpoint_format.name}: {checkpoint_format.looks_for}" in message
