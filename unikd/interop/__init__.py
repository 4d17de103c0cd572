"""Checkpoints of other frameworks as unikd detectors, recognised from their keys and metadata.

`detector_state(checkpoint, expected)` returns the unikd detector state dict of a checkpoint in
any registered format (`unikd.interop.formats`) and names the format; one it does not know is an
error that says what each format looks for. Registered, in the order they are tried: UniDistill's
BEVFusion (`unidistill`), mmdet3d CenterPoint (`mmdet3d_centerpoint`), mmdet3d's and mit-han-lab's
BEVFusion (`bevfusion`), and unikd's own two (a Lightning checkpoint with `model.*` keys, a detector
state dict), registered here last because they are the least specific.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from unikd.interop import bevfusion, mmdet3d_centerpoint, unidistill  # noqa: F401  (they register their formats)
from unikd.interop.formats import (
    FORMATS,
    CheckpointFormat,
    CheckpointFormatError,
    Conversion,
    State,
    checkpoint_state,
    find_format,
    register_format,
)

UNIKD_MODULES = ("voxel_encoder", "middle_encoder", "camera", "fuser", "backbone", "neck", "head")
UNIKD_MODEL_PREFIX = "model."


def _is_unikd_lightning(checkpoint: Mapping[str, Any], state: State) -> bool:
    return any(key.startswith(UNIKD_MODEL_PREFIX) for key in state)


def _is_unikd_detector_state(checkpoint: Mapping[str, Any], state: State) -> bool:
    return any(key.split(".")[0] in UNIKD_MODULES for key in state)


def _unikd_modalities(checkpoint: Mapping[str, Any], state: State) -> tuple[str, ...]:
    """The sensors of a unikd detector's state, from its encoders' keys (camera first, as unikd sorts them)."""
    roots = {key.removeprefix(UNIKD_MODEL_PREFIX).split(".")[0] for key in state}
    return tuple(sensor for sensor, root in (("camera", "camera"), ("lidar", "voxel_encoder")) if root in roots)


def _no_preset(checkpoint: Mapping[str, Any], state: State) -> None:
    return None  # a unikd checkpoint records its own (`unikd.exps.checkpoints` metadata)


register_format(
    CheckpointFormat(
        name="unikd",
        looks_for="a unikd checkpoint ('state_dict' with 'model.*' keys)",
        recognise=_is_unikd_lightning,
        to_unikd=lambda c: ({k.removeprefix(UNIKD_MODEL_PREFIX): v for k, v in c.state.items()}, "unikd checkpoint"),
        preset=_no_preset,
        modalities=_unikd_modalities,
    )
)
register_format(
    CheckpointFormat(
        name="unikd_detector_state",
        looks_for=f"a unikd detector state dict (keys under {', '.join(UNIKD_MODULES)})",
        recognise=_is_unikd_detector_state,
        to_unikd=lambda c: (c.state, "unikd detector state dict"),
        preset=_no_preset,
        modalities=_unikd_modalities,
    )
)


def is_unikd_checkpoint(checkpoint: Mapping[str, Any]) -> bool:
    """Whether a checkpoint is one of unikd's experiments (a `state_dict` with `model.*` keys that no
    other registered format claims)."""
    if not isinstance(checkpoint.get("state_dict"), Mapping):
        return False
    try:
        return find_format(checkpoint)[0].name == "unikd"
    except CheckpointFormatError:
        return False


def model_size_of(checkpoint: Mapping[str, Any]) -> str | None:
    """The unikd preset of another framework's checkpoint, when its keys or metadata say it."""
    checkpoint_format, state = find_format(checkpoint)
    return checkpoint_format.preset(checkpoint, state)


def checkpoint_modalities(checkpoint: Mapping[str, Any]) -> tuple[str, ...]:
    """The sensors another framework's checkpoint reads, from its encoders' keys."""
    checkpoint_format, state = find_format(checkpoint)
    return checkpoint_format.modalities(checkpoint, state)


def detector_state(
    checkpoint: Mapping[str, Any],
    expected: Mapping[str, torch.Tensor],
    box_convention: str | None = None,
    config: Mapping[str, Any] | None = None,
) -> tuple[dict[str, torch.Tensor], str]:
    """(unikd detector state dict, a description of the source format) of `checkpoint`.

    `expected` is the target detector's state dict (the shapes that decide sparse-kernel layouts);
    `box_convention` overrides what an mmdet3d checkpoint's metadata says; `config`, the target's model
    configuration, is checked against what a source records of its geometry (a CheckpointFormatError when
    they differ). Keys a source has that unikd does not are kept under their source name, so that the
    strict check reports them.
    """
    checkpoint_format, state = find_format(checkpoint)
    return checkpoint_format.to_unikd(Conversion(checkpoint, state, expected, box_convention, config))


__all__ = [
    "FORMATS",
    "CheckpointFormat",
    "CheckpointFormatError",
    "checkpoint_modalities",
    "checkpoint_state",
    "detector_state",
    "is_unikd_checkpoint",
    "model_size_of",
    "register_format",
]
