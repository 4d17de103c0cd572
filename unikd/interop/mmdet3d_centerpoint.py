"""mmdet3d CenterPoint checkpoints (nuScenes: HardSimpleVFE, SparseEncoder, SECOND, SECONDFPN, CenterHead)
as unikd LiDAR detectors, and back.

The networks are the same layer for layer (`unikd.models.configs`: sizes `centerpoint_0075` and
`centerpoint_01`); only the module names differ, and two things that depend on where the
checkpoint comes from:

- sparse kernels: spconv 1.x / mmcv layout in mmdet3d 0.x checkpoints, spconv 2.x in 1.x ones
  (`spconv_layout`, decided per kernel from its shape);
- the box convention of the head's regression maps. mmdet3d >= 1.0 regresses what unikd does
  (gravity-centre z, log of (l, w, h), sin/cos of the devkit yaw, velocity). mmdet3d 0.x used
  dims (w, l, h) and yaw' = -yaw - pi/2, so sin(yaw') = -cos(yaw), cos(yaw') = -sin(yaw): the last
  conv of its `dim` head has rows (w, l, h) and of its `rot` head rows (-cos, -sin) of unikd's.
  `convert_box_convention` permutes and negates those rows, so that a converted 0.x teacher
  predicts unikd's maps and response distillation compares like with like.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from unikd.interop.formats import CheckpointFormat, Conversion, State, register_format
from unikd.interop.mmdet3d_meta import mmdet3d_box_convention
from unikd.interop.spconv_layout import spconv1_kernel, spconv2_kernel
from unikd.models.configs import CENTERPOINT_0075, CENTERPOINT_01

_BLOCK_PARTS = ("conv1", "bn1", "conv2", "bn2")

# (mmdet3d key, unikd key) templates of the keys that map one to one; {name} matches a word, {which}
# input|out, {rest} the remainder, any other placeholder an index
_KEY_PAIRS = (
    ("pts_middle_encoder.conv_{which}.{k}.{rest}", "middle_encoder.conv_{which}.{k}.{rest}"),
    ("pts_backbone.blocks.{i}.{k}.{rest}", "backbone.stages.{i}.{k}.{rest}"),
    ("pts_neck.deblocks.{i}.{k}.{rest}", "neck.blocks.{i}.{k}.{rest}"),
    ("pts_bbox_head.shared_conv.conv.{rest}", "head.shared_conv.0.{rest}"),
    ("pts_bbox_head.shared_conv.bn.{rest}", "head.shared_conv.1.{rest}"),
    ("pts_bbox_head.task_heads.{t}.{name}.0.conv.{rest}", "head.task_heads.{t}.heads.{name}.0.0.{rest}"),
    ("pts_bbox_head.task_heads.{t}.{name}.0.bn.{rest}", "head.task_heads.{t}.heads.{name}.0.1.{rest}"),
    ("pts_bbox_head.task_heads.{t}.{name}.1.{rest}", "head.task_heads.{t}.heads.{name}.1.{rest}"),
)
_PLACEHOLDER_PATTERNS = {"name": r"\w+", "which": "input|out", "rest": ".+"}
_INDEX_PATTERN = r"\d+"


def _template_regex(template: str) -> re.Pattern:
    parts = re.split(r"\{(\w+)\}", template)
    pattern = "".join(
        re.escape(part) if i % 2 == 0 else f"(?P<{part}>{_PLACEHOLDER_PATTERNS.get(part, _INDEX_PATTERN)})"
        for i, part in enumerate(parts)
    )
    return re.compile(f"^{pattern}$")


# per pair: (mmdet3d regex, unikd regex), compiled once
_KEY_REGEXES = tuple((_template_regex(mm), _template_regex(ours)) for mm, ours in _KEY_PAIRS)


def _translate(key: str, direction: int) -> str | None:
    """`key` through the first template pair whose side `direction` (0 mmdet3d, 1 unikd) matches."""
    for pair, regexes in zip(_KEY_PAIRS, _KEY_REGEXES, strict=True):
        match = regexes[direction].match(key)
        if match:
            return pair[1 - direction].format(**match.groupdict())
    return None


_DOWNSAMPLE = re.compile(r"^pts_middle_encoder\.encoder_layers\.encoder_layer(\d+)\.(\d+)\.([01])\.(.+)$")
_BLOCK = re.compile(r"^pts_middle_encoder\.encoder_layers\.encoder_layer(\d+)\.(\d+)\.((?:conv|bn)[12]\..+)$")


def is_centerpoint_state(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether a state dict has mmdet3d CenterPoint's module names."""
    return any(key.startswith("pts_bbox_head.task_heads.") for key in state) and any(
        key.startswith("pts_middle_encoder.") for key in state
    )


def unikd_key(key: str) -> str | None:
    """The unikd detector key of an mmdet3d CenterPoint key (None when it has none)."""
    match = _BLOCK.match(key)
    if match:
        stage, block, rest = match.groups()
        return f"middle_encoder.stages.{int(stage) - 1}.{block}.{rest}"
    match = _DOWNSAMPLE.match(key)
    if match:  # SparseSequential(conv, bn, relu) at position n of the stage -> unikd positions n, n + 1
        stage, position, part, rest = match.groups()
        return f"middle_encoder.stages.{int(stage) - 1}.{int(position) + int(part)}.{rest}"
    return _translate(key, 0)


def mmdet3d_key(key: str, value: torch.Tensor) -> str | None:
    """The mmdet3d CenterPoint key of a unikd detector key (None when it has none)."""
    match = re.match(r"^middle_encoder\.stages\.(\d+)\.(\d+)\.(.+)$", key)
    if match:
        stage, position, rest = match.groups()
        prefix = f"pts_middle_encoder.encoder_layers.encoder_layer{int(stage) + 1}"
        if rest.split(".")[0] in _BLOCK_PARTS:
            return f"{prefix}.{position}.{rest}"
        if rest == "weight" and value.ndim == 5:  # the downsampling convolution
            return f"{prefix}.{position}.0.{rest}"
        return f"{prefix}.{int(position) - 1}.1.{rest}"  # its BatchNorm, one position later in unikd
    return _translate(key, 1)


def convert_box_convention(state: dict[str, torch.Tensor]) -> None:
    """Rewrite (in place) the last `dim` and `rot` convolutions of every task from mmdet3d 0.x's box
    convention to unikd's (module docstring). The map is its own inverse, so it also takes unikd maps
    back to 0.x ones."""
    for key in list(state):
        match = re.match(r"^(head\.task_heads\.\d+\.heads)\.(dim|rot)\.1\.(weight|bias)$", key)
        if not match:
            continue
        if match.group(2) == "dim":  # (w, l, h) <-> (l, w, h)
            state[key] = state[key][[1, 0, 2]].clone()
        else:  # (sin', cos') = (-cos, -sin)  <->  (sin, cos) = (-cos', -sin')
            state[key] = -state[key][[1, 0]]


def centerpoint_to_unikd(
    source: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], box_convention: str
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(unikd detector state, mmdet3d keys that have no unikd counterpart).

    `expected` is the target model's state dict (for the sparse kernels' shapes); `box_convention`
    is "1.x" (mmdet3d >= 1.0, as unikd) or "0.x".
    """
    if box_convention not in ("0.x", "1.x"):
        raise ValueError(f"box_convention must be '0.x' or '1.x', got {box_convention!r}")
    state: dict[str, torch.Tensor] = {}
    unmapped = []
    for key, value in source.items():
        target = unikd_key(key)
        if target is None:
            unmapped.append(key)
            continue
        if value.ndim == 5 and target in expected:
            value = spconv2_kernel(value, tuple(expected[target].shape), key)
        state[target] = value
    if box_convention == "0.x":
        convert_box_convention(state)
    return state, unmapped


def unikd_to_centerpoint(state: Mapping[str, torch.Tensor], spconv_version: int = 2) -> dict[str, torch.Tensor]:
    """An mmdet3d (>= 1.0) CenterPoint state dict of a unikd LiDAR detector with a CenterPoint
    configuration; sparse kernels in spconv `spconv_version`'s layout."""
    converted = {}
    for key, value in state.items():
        target = mmdet3d_key(key, value)
        if target is None:
            raise KeyError(f"{key}: a unikd key with no mmdet3d CenterPoint counterpart (not a CenterPoint-shaped detector?)")
        converted[target] = spconv1_kernel(value) if value.ndim == 5 and spconv_version == 1 else value
    return converted


# unikd preset of each published configuration, by its voxel size
PUBLISHED = {
    (0.075, 0.075, 0.2): (CENTERPOINT_0075.name, "centerpoint_voxel0075_second_secfpn_head-circlenms_8xb4-cyclic-20e_nus-3d"),
    (0.1, 0.1, 0.2): (CENTERPOINT_01.name, "centerpoint_voxel01_second_secfpn_head-circlenms_8xb4-cyclic-20e_nus-3d"),
}


def model_size_of(meta: Mapping) -> str | None:
    """The unikd model size of an mmdet3d checkpoint from its metadata: the published config's name
    (`config_name`, as tools/export_checkpoint.py writes it) or the config text (mmcv's `config`,
    mmengine's `cfg`) and its `voxel_size`; None when it holds neither."""
    for size, name in PUBLISHED.values():
        if meta.get("config_name") == name:
            return size
    text = meta.get("config") or meta.get("cfg")
    if not isinstance(text, str):
        return None
    match = re.search(r"voxel_size\s*=\s*\[([^\]]+)\]", text)
    if not match:
        return None
    voxel = tuple(round(float(v), 4) for v in match.group(1).split(","))
    if voxel not in PUBLISHED:
        raise ValueError(f"CenterPoint with voxel size {voxel}: unikd has configurations for {sorted(PUBLISHED)}")
    return PUBLISHED[voxel][0]


def _to_unikd(conversion: Conversion) -> tuple[State, str]:
    box_convention = conversion.box_convention
    if box_convention is None:
        box_convention, source = mmdet3d_box_convention(conversion.checkpoint)
    else:
        source = "box convention given"
    converted, unmapped = centerpoint_to_unikd(conversion.state, conversion.expected, box_convention)
    converted.update({key: conversion.state[key] for key in unmapped})
    return converted, f"mmdet3d CenterPoint ({source}, {box_convention} box convention)"


CENTERPOINT_FORMAT = register_format(
    CheckpointFormat(
        name="mmdet3d_centerpoint",
        looks_for="an mmdet3d CenterPoint checkpoint (keys under pts_middle_encoder. and pts_bbox_head.task_heads.)",
        recognise=lambda checkpoint, state: is_centerpoint_state(state),
        to_unikd=_to_unikd,
        preset=lambda checkpoint, state: model_size_of(checkpoint.get("meta") or {}),
        modalities=lambda checkpoint, state: ("lidar",),
    )
)
