"""Checkpoints of other frameworks as unikd detectors, recognised from their keys and metadata.

`detector_state(checkpoint, expected)` returns the unikd detector state dict of a checkpoint in
any known format and names the format; one it does not know is an error that says what was
looked for. Known: unikd (a Lightning checkpoint with `model.*` keys, or a detector state dict),
mmdet3d CenterPoint (`mmdet3d_centerpoint`), UniDistill's BEVFusion (`unidistill`), mmdet3d's and mit-han-lab's
BEVFusion (`bevfusion`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from unikd.interop import bevfusion, mmdet3d_centerpoint, unidistill
from unikd.interop.bevfusion_camera import check_geometry as check_bevfusion_geometry
from unikd.interop.mmdet3d_centerpoint import centerpoint_to_unikd, is_centerpoint_state
from unikd.interop.unidistill_camera import check_geometry_buffers

UNIKD_MODULES = ("voxel_encoder", "middle_encoder", "camera", "fuser", "backbone", "neck", "head")


class CheckpointFormatError(RuntimeError):
    """A checkpoint whose format is not recognised, or whose metadata does not say enough to convert it."""


LOOKED_FOR = (
    "a unikd checkpoint ('state_dict' with 'model.*' keys), a unikd detector state dict "
    f"(keys under {', '.join(UNIKD_MODULES)}), an mmdet3d CenterPoint checkpoint "
    "(keys under pts_middle_encoder. and pts_bbox_head.task_heads.), an mmdet3d BEVFusion checkpoint (keys under "
    "pts_middle_encoder. and bbox_head.heatmap_head.), a mit-han-lab BEVFusion checkpoint (keys under encoders. and "
    "heads.object.), or a UniDistill BEVFusion checkpoint ('state_dict' with model.* keys or 'model_state', under "
    "det_head.dense_head. and bev_encoder.backbone_2d.)"
)


def checkpoint_state(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint's state dict: its `state_dict` (Lightning, mmdet3d), its `model_state`
    (OpenPCDet-style files such as UniDistill's teachers), or the checkpoint itself."""
    state = checkpoint
    for name in ("state_dict", "model_state"):
        if isinstance(checkpoint.get(name), Mapping):
            state = checkpoint[name]
            break
    return {key: value for key, value in state.items() if isinstance(value, torch.Tensor)}


def is_bevfusion_state(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether a state dict is mmdet3d's or mit-han-lab's BEVFusion."""
    return bevfusion.is_mmdet3d_bevfusion_state(state) or bevfusion.is_mit_han_lab_state(state)


def is_unikd_checkpoint(checkpoint: Mapping[str, Any]) -> bool:
    """Whether a checkpoint is one of unikd's experiments (a `state_dict` with `model.*` keys that no
    other known format claims)."""
    state = checkpoint.get("state_dict")
    if not isinstance(state, Mapping) or not any(key.startswith("model.") for key in state):
        return False
    return unidistill.model_state(state) is None


def model_size_of(checkpoint: Mapping[str, Any]) -> str | None:
    """The unikd model size of another framework's checkpoint, when its keys or metadata say it."""
    state = checkpoint_state(checkpoint)
    uni = unidistill.model_state(state)
    if uni is not None:
        return unidistill.MODEL_SIZES.get(unidistill.modalities(uni))
    if is_bevfusion_state(state):
        return bevfusion.MODEL_SIZES[bevfusion.modalities(state)]
    return mmdet3d_centerpoint.model_size_of(checkpoint.get("meta") or {})


def checkpoint_modalities(checkpoint: Mapping[str, Any]) -> tuple[str, ...]:
    """The sensors another framework's checkpoint reads: a UniDistill or BEVFusion model's from its encoders'
    keys, ("lidar",) for mmdet3d CenterPoint."""
    state = checkpoint_state(checkpoint)
    uni = unidistill.model_state(state)
    if uni is not None:
        return unidistill.modalities(uni)
    return bevfusion.modalities(state) if is_bevfusion_state(state) else ("lidar",)


def mmdet3d_box_convention(checkpoint: Mapping[str, Any]) -> tuple[str, str]:
    """("0.x" or "1.x", the version it was read from) of an mmdet3d checkpoint's metadata."""
    meta = checkpoint.get("meta") or {}
    if meta.get("box_convention") in ("0.x", "1.x"):  # written by tools/export_checkpoint.py
        return meta["box_convention"], meta.get("exported_by", "exported")
    version = meta.get("mmdet3d_version")
    if isinstance(version, str) and re.match(r"^\d+\.", version):
        return ("0.x" if int(version.split(".")[0]) == 0 else "1.x"), f"mmdet3d {version}"
    if "mmengine_version" in meta:
        return "1.x", f"mmengine {meta['mmengine_version']}"
    raise CheckpointFormatError(
        "the mmdet3d checkpoint records no mmdet3d_version or mmengine_version in its 'meta', so its box "
        "convention (0.x or 1.x) is unknown: convert it once with "
        "`python tools/convert_checkpoint.py SRC --out DST --box-convention 0.x|1.x`"
    )


def detector_state(
    checkpoint: Mapping[str, Any],
    expected: Mapping[str, torch.Tensor],
    box_convention: str | None = None,
    config: Mapping[str, Any] | None = None,
) -> tuple[dict[str, torch.Tensor], str]:
    """(unikd detector state dict, a description of the source format) of `checkpoint`.

    `expected` is the target detector's state dict (the shapes that decide sparse-kernel layouts);
    `box_convention` overrides what an mmdet3d checkpoint's metadata says; `config`, the target's model
    configuration, is checked against what a source records of its geometry (a UniDistill camera
    encoder's grid and depth bins: a CheckpointFormatError when they differ). Keys a source has that
    unikd does not are kept under their source name, so that the strict check reports them.
    """
    state = checkpoint_state(checkpoint)
    uni = unidistill.model_state(state)
    if uni is not None:
        if config is not None and "camera" in config:
            try:
                check_geometry_buffers(uni, config)
            except ValueError as error:
                raise CheckpointFormatError(str(error)) from None
        converted, unmapped, dropped = unidistill.unidistill_to_unikd(uni, expected)
        converted.update({key: uni[key] for key in unmapped})
        modality = "+".join(unidistill.modalities(uni))
        return converted, f"UniDistill BEVFusion ({modality}; dropped as training-only: {', '.join(dropped) or 'none'})"
    if is_bevfusion_state(state):
        mit_han_lab = bevfusion.is_mit_han_lab_state(state)
        if mit_han_lab:
            state, source = bevfusion.mit_han_lab_to_mmdet3d(state), "mit-han-lab BEVFusion"
            box_convention = box_convention or "0.x"  # its code base is mmdet3d 0.x's
        else:
            source = "mmdet3d BEVFusion"
            if box_convention is None:
                box_convention, read_from = mmdet3d_box_convention(checkpoint)
                source += f", {read_from}"
        if config is not None and "camera" in config:
            try:
                check_bevfusion_geometry(state, config)
            except ValueError as error:
                raise CheckpointFormatError(str(error)) from None
        converted, unmapped = bevfusion.bevfusion_to_unikd(state, expected, box_convention)
        converted.update({key: state[key] for key in unmapped})
        return converted, f"{source} ({box_convention} box convention)"
    if is_centerpoint_state(state):
        if box_convention is None:
            box_convention, source = mmdet3d_box_convention(checkpoint)
        else:
            source = "box convention given"
        converted, unmapped = centerpoint_to_unikd(state, expected, box_convention)
        converted.update({key: state[key] for key in unmapped})
        return converted, f"mmdet3d CenterPoint ({source}, {box_convention} box convention)"
    if any(key.startswith("model.") for key in state):
        return {key.removeprefix("model."): value for key, value in state.items()}, "unikd checkpoint"
    if any(key.split(".")[0] in UNIKD_MODULES for key in state):
        return state, "unikd detector state dict"
    sample = ", ".join(sorted(state)[:3]) or "no tensors"
    raise CheckpointFormatError(f"unrecognised checkpoint format (keys such as {sample}); looked for {LOOKED_FOR}")
