"""BEVFusion checkpoints — mmdet3d's `projects/BEVFusion` (BEVFusion-L, BEVFusion-LC) and mit-han-lab's original
code base — as unikd detectors (sizes `bevfusion_lidar` and `bevfusion_fusion`).

Names. mit-han-lab's modules map onto mmdet3d's (`mit_han_lab_to_mmdet3d`): `encoders.lidar.backbone` ->
`pts_middle_encoder`, `encoders.camera.{backbone,neck,vtransform}` -> `img_backbone`, `img_neck`,
`view_transform`, `fuser` -> `fusion_layer`, `decoder.{backbone,neck}` -> `pts_backbone`, `pts_neck`,
`heads.object` -> `bbox_head`; inside a decoder layer `self_attn` -> `self_attn.attn`, `multihead_attn` ->
`cross_attn.attn`, `linear1`/`linear2` -> `ffn.layers.0.0`/`ffn.layers.1`, `norm1`-`norm3` -> `norms.0`-`norms.2`.
mmdet3d's LiDAR branch and decoder have CenterPoint's names (`unikd.interop.mmdet3d_centerpoint`).

Layout. BEVFusion's BEV is x-major: its voxel coordinates are (b, x, y, z), its sparse shape (1440, 1440, 41)
in (x, y, z) and its BEV maps [B, C, X, Y]; unikd's are (b, z, y, x) and [B, C, Y, X]. The same network in
unikd's layout has every sparse kernel's spatial axes reversed and every 2D convolution on the BEV (SECOND,
SECONDFPN, the fuser, the head's shared and heatmap convolutions, the camera's BEV downsampling)
transposed in its two spatial axes; a 1-D convolution over queries, the attention and the positional
encoding of (x, y) cell positions are unchanged (the head keeps (x, y) order in its regression and
positions).

Box convention. mmdet3d >= 1.0 regresses what unikd does (`unikd.models.heads.box_coder`); mit-han-lab's
code base is mmdet3d 0.x's (dims (w, l, h), yaw' = -yaw - pi/2), and its `dim` and `rot` prediction rows are
rewritten as `mmdet3d_centerpoint.convert_box_convention` does for CenterPoint.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from unikd.interop import mmdet3d_centerpoint
from unikd.interop.bevfusion_camera import camera_to_unikd, check_geometry
from unikd.interop.formats import CheckpointFormat, CheckpointFormatError, Conversion, State, register_format
from unikd.interop.mmdet3d_meta import mmdet3d_box_convention
from unikd.interop.spconv_layout import spconv2_kernels
from unikd.models.configs import BEVFUSION_FUSION, BEVFUSION_LIDAR

CAMERA_ROOTS = ("img_backbone.", "img_neck.", "view_transform.")

MIT_HAN_LAB_PREFIXES = (
    ("encoders.lidar.backbone.", "pts_middle_encoder."),
    ("encoders.camera.backbone.", "img_backbone."),
    ("encoders.camera.neck.", "img_neck."),
    ("encoders.camera.vtransform.", "view_transform."),
    ("fuser.", "fusion_layer."),
    ("decoder.backbone.", "pts_backbone."),
    ("decoder.neck.", "pts_neck."),
    ("heads.object.", "bbox_head."),
)
_MIT_HAN_LAB_DECODER = (
    (re.compile(r"^(bbox_head\.decoder\.\d+)\.self_attn\.(.+)$"), r"\1.self_attn.attn.\2"),
    (re.compile(r"^(bbox_head\.decoder\.\d+)\.multihead_attn\.(.+)$"), r"\1.cross_attn.attn.\2"),
    (re.compile(r"^(bbox_head\.decoder\.\d+)\.linear1\.(.+)$"), r"\1.ffn.layers.0.0.\2"),
    (re.compile(r"^(bbox_head\.decoder\.\d+)\.linear2\.(.+)$"), r"\1.ffn.layers.1.\2"),
    (re.compile(r"^(bbox_head\.decoder\.\d+)\.norm([123])\.(.+)$"), lambda m: f"{m[1]}.norms.{int(m[2]) - 1}.{m[3]}"),
)
# 2D convolutions on the BEV, whose kernels are transposed between the x-major and the y-major layout
_BEV_CONVOLUTIONS = re.compile(r"^(pts_backbone|pts_neck|fusion_layer|bbox_head\.shared_conv|bbox_head\.heatmap_head)\.")


def is_mmdet3d_bevfusion_state(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether a state dict has mmdet3d BEVFusion's module names (a TransFusion `bbox_head` and a LiDAR encoder)."""
    return any(key.startswith("bbox_head.heatmap_head.") for key in state) and any(
        key.startswith("pts_middle_encoder.") for key in state
    )


def is_mit_han_lab_state(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether a state dict has the module names of mit-han-lab's BEVFusion."""
    return any(key.startswith("heads.object.") for key in state) and any(key.startswith("encoders.") for key in state)


def mit_han_lab_to_mmdet3d(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A mit-han-lab BEVFusion state dict under mmdet3d's names (module docstring); a key under no known
    module keeps its name."""
    renamed = {}
    for key, value in state.items():
        for theirs, ours in MIT_HAN_LAB_PREFIXES:
            if key.startswith(theirs):
                key = ours + key.removeprefix(theirs)
                break
        for pattern, target in _MIT_HAN_LAB_DECODER:
            key = pattern.sub(target, key)
        renamed[key] = value
    return renamed


def _y_major_kernel(key: str, value: torch.Tensor) -> torch.Tensor:
    """A tensor of an x-major BEVFusion in unikd's y-major layout (module docstring)."""
    if value.ndim == 4 and _BEV_CONVOLUTIONS.match(key):
        return value.transpose(-1, -2).contiguous()
    return value


def unikd_key(key: str) -> str | None:
    """The unikd detector key of an mmdet3d BEVFusion LiDAR, decoder, fuser or head key (None when it has none;
    camera keys are `unikd.interop.bevfusion_camera`'s)."""
    if key.startswith("bbox_head."):
        return "head." + key.removeprefix("bbox_head.")
    if key.startswith("fusion_layer."):
        return "fuser." + key.removeprefix("fusion_layer.")
    return mmdet3d_centerpoint.unikd_key(key)


def bevfusion_to_unikd(
    source: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], box_convention: str = "1.x"
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(unikd detector state, source keys with no unikd counterpart) of an mmdet3d BEVFusion state dict
    (mit-han-lab's after `mit_han_lab_to_mmdet3d`).

    `expected` is the target model's state dict (the sparse kernels' shapes); `box_convention` is "1.x"
    (mmdet3d >= 1.0, as unikd) or "0.x" (mit-han-lab's code base).
    """
    if box_convention not in ("0.x", "1.x"):
        raise ValueError(f"box_convention must be '0.x' or '1.x', got {box_convention!r}")
    state: dict[str, torch.Tensor] = {}
    unmapped = []
    kernels = {}
    for key, value in source.items():
        if key.startswith(CAMERA_ROOTS):
            continue
        target = unikd_key(key)
        if target is None:
            unmapped.append(key)
            continue
        if value.ndim == 5 and target in expected:  # (x, y, z) kernel axes: read the layout against that shape
            out, depth, height, width, inputs = expected[target].shape
            kernels[target] = (value, (out, width, height, depth, inputs))
            continue
        state[target] = _y_major_kernel(key, value)
    for target, kernel in spconv2_kernels(kernels).items():
        state[target] = kernel.permute(0, 3, 2, 1, 4).contiguous()  # (out, x, y, z, in) -> (out, z, y, x, in)
    if box_convention == "0.x":
        convert_query_box_convention(state)
    camera = {key: value for key, value in source.items() if key.startswith(CAMERA_ROOTS)}
    if camera:
        camera_state, camera_unmapped = camera_to_unikd(camera)
        state.update(camera_state)
        unmapped += camera_unmapped
    return state, unmapped


def convert_query_box_convention(state: dict[str, torch.Tensor]) -> None:
    """Rewrite (in place) the last `dim` and `rot` convolutions of every TransFusion prediction head from mmdet3d
    0.x's box convention to unikd's: rows (w, l, h) -> (l, w, h), (sin', cos') = (-cos, -sin) -> (sin, cos)."""
    for key in list(state):
        match = re.match(r"^head\.prediction_heads\.\d+\.(dim|rot)\.1\.(weight|bias)$", key)
        if match:
            state[key] = state[key][[1, 0, 2]].clone() if match.group(1) == "dim" else -state[key][[1, 0]]


def modalities(state: Mapping[str, torch.Tensor]) -> tuple[str, ...]:
    """The sensors a BEVFusion state dict (either naming) reads: ("lidar",) or ("camera", "lidar")."""
    camera = any(key.startswith(("img_backbone.", "encoders.camera.")) for key in state)
    return ("camera", "lidar") if camera else ("lidar",)


# unikd preset of mmdet3d's published BEVFusion models, by their sensors
MODEL_SIZES = {("lidar",): BEVFUSION_LIDAR.name, ("camera", "lidar"): BEVFUSION_FUSION.name}


def is_bevfusion_state(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether a state dict is mmdet3d's or mit-han-lab's BEVFusion."""
    return is_mmdet3d_bevfusion_state(state) or is_mit_han_lab_state(state)


def _to_unikd(conversion: Conversion) -> tuple[State, str]:
    state, box_convention = conversion.state, conversion.box_convention
    if is_mit_han_lab_state(state):
        state, source = mit_han_lab_to_mmdet3d(state), "mit-han-lab BEVFusion"
        box_convention = box_convention or "0.x"  # its code base is mmdet3d 0.x's
    else:
        source = "mmdet3d BEVFusion"
        if box_convention is None:
            box_convention, read_from = mmdet3d_box_convention(conversion.checkpoint)
            source += f", {read_from}"
    if conversion.config is not None and "camera" in conversion.config:
        try:
            check_geometry(state, conversion.config)
        except ValueError as error:
            raise CheckpointFormatError(str(error)) from None
    converted, unmapped = bevfusion_to_unikd(state, conversion.expected, box_convention)
    converted.update({key: state[key] for key in unmapped})
    return converted, f"{source} ({box_convention} box convention)"


BEVFUSION_FORMAT = register_format(
    CheckpointFormat(
        name="bevfusion",
        looks_for="an mmdet3d BEVFusion checkpoint (keys under pts_middle_encoder. and bbox_head.heatmap_head.) or a "
        "mit-han-lab BEVFusion checkpoint (keys under encoders. and heads.object.)",
        recognise=lambda checkpoint, state: is_bevfusion_state(state),
        to_unikd=_to_unikd,
        preset=lambda checkpoint, state: MODEL_SIZES[modalities(state)],
        modalities=lambda checkpoint, state: modalities(state),
    )
)
