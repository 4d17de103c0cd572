"""UniDistill's BEVFusion checkpoints (CVPR 2023, megvii-research/CVPR2023-UniDistill) as unikd detectors.

Its LiDAR detector (`BEVFusion_nuscenes_centerhead_lidar_exp`) is unikd's size `unidistill_lidar` layer
for layer: MeanVFE, VoxelResBackBone8x (OpenPCDet) = `SparseEncoder`, HeightCompression (channel
c * D + d, as unikd), BaseBEVBackbone = `SECOND` + `SECONDFPN`, CenterHeadIouAware = `CenterHead` with
`iou_rectifier`. Its maps are y-major like unikd's (spconv's PointToVoxel gives (z, y, x) voxel
coordinates, HeightCompression keeps (H, W) = (y, x), the head's flat index is row * W + col with
reg = (x, y) offsets from the cell corner), so no kernel or map is transposed. What the conversion does:

- module names, by the rules below (`unikd_key`); the weights of UniDistill's training-loss weighting
  (`det_head.dense_head.auto_loss.params`, AutomaticWeightedLoss) have no counterpart and are dropped;
- convolution biases before a BatchNorm (the residual blocks' SubM convs, the head's shared conv and
  the first conv of each SepHead branch) are folded into that BatchNorm's running mean,
  running_mean - bias: exact in evaluation, and in training too (BatchNorm subtracts the batch mean,
  bias included, and the bias gets no gradient);
- the stride-1 deblock is a 1x1 ConvTranspose2d [in, out, 1, 1] there, a 1x1 Conv2d [out, in, 1, 1] in
  unikd: the same map with the first two dimensions swapped;
- sparse kernels come in the layout of the spconv that saved them (its requirements say spconv 2.1,
  whose Native algorithm stores (kD, kH, kW, out, in)); `spconv_layout.spconv2_kernels` reads each.

Checkpoints: its Lightning checkpoints hold `state_dict` with the `model.` prefix (the experiment's
`self.model`; in a distillation experiment's, the student, beside `teacher_model.`); the teacher files its
distillation experiments read hold `model_state` without it.
Camera and fusion encoder keys go through `unikd.interop.unidistill_camera.camera_to_unikd`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import torch

from unikd.interop.formats import CheckpointFormat, CheckpointFormatError, Conversion, State, register_format
from unikd.interop.spconv_layout import spconv2_kernels
from unikd.interop.unidistill_camera import camera_to_unikd, check_geometry_buffers
from unikd.models.configs import UNIDISTILL_CAMERA, UNIDISTILL_FUSION, UNIDISTILL_LIDAR

MODEL_PREFIX = "model."
CAMERA_ROOTS = ("camera_encoder.", "fusion_encoder.")
TRAINING_ONLY = ("det_head.dense_head.auto_loss.params",)  # AutomaticWeightedLoss: weights of its loss terms
HEAD_NAMES = {"hm": "heatmap"}  # UniDistill's SepHead branch names that unikd's CenterHead calls otherwise
_SEPHEAD_POSITIONS = {"0": "0.0", "1": "0.1", "3": "1"}  # Sequential(conv, BN, ReLU, conv) -> ((conv, BN, ReLU), conv)

_Rule = tuple[re.Pattern, Callable[[tuple[str, ...]], str]]
_RULES: tuple[_Rule, ...] = (
    (re.compile(r"^lidar_encoder\.backbone_3d\.conv_(input|out)\.([01])\.(.+)$"), lambda g: f"middle_encoder.conv_{g[0]}.{g[1]}.{g[2]}"),
    # conv1 = the first stage's two residual blocks; conv2..4 = a downsampling SparseSequential(conv, BN,
    # ReLU) and two residual blocks: the downsampling ends unikd's previous stage (positions 2, 3)
    (re.compile(r"^lidar_encoder\.backbone_3d\.conv1\.([01])\.(.+)$"), lambda g: f"middle_encoder.stages.0.{g[0]}.{g[1]}"),
    (re.compile(r"^lidar_encoder\.backbone_3d\.conv([234])\.0\.([01])\.(.+)$"),
     lambda g: f"middle_encoder.stages.{int(g[0]) - 2}.{2 + int(g[1])}.{g[2]}"),
    (re.compile(r"^lidar_encoder\.backbone_3d\.conv([234])\.([12])\.(.+)$"),
     lambda g: f"middle_encoder.stages.{int(g[0]) - 1}.{int(g[1]) - 1}.{g[2]}"),
    # blocks: ZeroPad2d(1), conv, BN, ReLU, (conv, BN, ReLU) x n -> unikd's padded conv first
    (re.compile(r"^bev_encoder\.backbone_2d\.blocks\.(\d+)\.(\d+)\.(.+)$"), lambda g: f"backbone.stages.{g[0]}.{int(g[1]) - 1}.{g[2]}"),
    (re.compile(r"^bev_encoder\.backbone_2d\.deblocks\.(\d+)\.([01])\.(.+)$"), lambda g: f"neck.blocks.{g[0]}.{g[1]}.{g[2]}"),
    (re.compile(r"^det_head\.dense_head\.shared_conv\.([01])\.(.+)$"), lambda g: f"head.shared_conv.{g[0]}.{g[1]}"),
    (re.compile(r"^det_head\.dense_head\.tasks\.(\d+)\.(\w+)\.([013])\.(.+)$"),
     lambda g: f"head.task_heads.{g[0]}.heads.{HEAD_NAMES.get(g[1], g[1])}.{_SEPHEAD_POSITIONS[g[2]]}.{g[3]}"),
)
# convolution biases and the BatchNorm right after them (`_fold_biases`)
_BIASED = (
    (re.compile(r"^(lidar_encoder\.backbone_3d\.conv\d\.\d+)\.conv([12])\.bias$"), r"\1.bn\2."),
    (re.compile(r"^(det_head\.dense_head\.shared_conv)\.0\.bias$"), r"\1.1."),
    (re.compile(r"^(det_head\.dense_head\.tasks\.\d+\.\w+)\.0\.bias$"), r"\1.1."),
)
_STRIDE1_DEBLOCK = re.compile(r"^bev_encoder\.backbone_2d\.deblocks\.\d+\.0\.weight$")


def model_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """The keys of a UniDistill BEVFusion state dict after the model prefix, or None when `state` is not
    one (recognised by its detection head `det_head.dense_head.` and BEV encoder `bev_encoder.`). In a
    Lightning checkpoint the model is `model.` (in its distillation experiments the student; the
    teacher's `teacher_model.` keys are left out)."""
    if any(key.startswith(MODEL_PREFIX) for key in state):
        state = {key.removeprefix(MODEL_PREFIX): value for key, value in state.items() if key.startswith(MODEL_PREFIX)}
    has = {root for root in ("det_head.dense_head.", "bev_encoder.backbone_2d.") if any(k.startswith(root) for k in state)}
    return dict(state) if len(has) == 2 else None


def modalities(state: Mapping[str, torch.Tensor]) -> tuple[str, ...]:
    """The modalities of a UniDistill model state (`model_state`): ("lidar",), ("camera",) or both."""
    found = []
    if any(key.startswith("camera_encoder.") for key in state):
        found.append("camera")
    if any(key.startswith("lidar_encoder.") for key in state):
        found.append("lidar")
    return tuple(found)


def unikd_key(key: str) -> str | None:
    """The unikd detector key of a UniDistill LiDAR, BEV-encoder or head key (after the model prefix)."""
    for pattern, target in _RULES:
        match = pattern.match(key)
        if match:
            return target(match.groups())
    return None


def _fold_biases(state: dict[str, torch.Tensor]) -> None:
    """Fold (in place) each convolution bias into the running mean of the BatchNorm after it."""
    for key in [key for key in state if key.endswith(".bias")]:
        for pattern, norm in _BIASED:
            if pattern.match(key):
                mean = pattern.sub(norm, key) + "running_mean"
                if mean not in state:
                    raise KeyError(f"{key}: a convolution bias without its BatchNorm ({mean} is missing)")
                state[mean] = state[mean] - state.pop(key)
                break


def unidistill_to_unikd(
    state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """(unikd detector state, UniDistill keys with no unikd counterpart, keys dropped as training-only).

    `state` holds the keys after the model prefix (`model_state`); `expected` is the target model's
    state dict (for the sparse kernels' shapes).
    """
    source = {key: value for key, value in state.items() if not key.startswith(CAMERA_ROOTS)}
    dropped = [key for key in TRAINING_ONLY if key in source]
    for key in dropped:
        del source[key]
    _fold_biases(source)
    converted: dict[str, torch.Tensor] = {}
    unmapped = []
    for key, value in source.items():
        target = unikd_key(key)
        if target is None:
            unmapped.append(key)
            continue
        if _STRIDE1_DEBLOCK.match(key) and value.shape[-2:] == (1, 1):
            value = value.transpose(0, 1).contiguous()  # ConvTranspose2d [in, out] -> Conv2d [out, in]
        converted[target] = value
    kernels = {key: (value, tuple(expected[key].shape)) for key, value in converted.items() if value.ndim == 5 and key in expected}
    converted.update(spconv2_kernels(kernels))
    camera = {key: value for key, value in state.items() if key.startswith(CAMERA_ROOTS)}
    if camera:  # the camera and fusion encoders: unikd.interop.unidistill_camera's rules
        camera_converted, camera_unmapped = camera_to_unikd(camera)
        converted.update(camera_converted)
        unmapped += camera_unmapped
    return converted, unmapped, dropped


# the unikd preset of each UniDistill model, by its modalities
MODEL_SIZES = {
    ("lidar",): UNIDISTILL_LIDAR.name,
    ("camera",): UNIDISTILL_CAMERA.name,
    ("camera", "lidar"): UNIDISTILL_FUSION.name,
}


def _to_unikd(conversion: Conversion) -> tuple[State, str]:
    uni = model_state(conversion.state)
    if conversion.config is not None and "camera" in conversion.config:
        try:
            check_geometry_buffers(uni, conversion.config)
        except ValueError as error:
            raise CheckpointFormatError(str(error)) from None
    converted, unmapped, dropped = unidistill_to_unikd(uni, conversion.expected)
    converted.update({key: uni[key] for key in unmapped})
    modality = "+".join(modalities(uni))
    return converted, f"UniDistill BEVFusion ({modality}; dropped as training-only: {', '.join(dropped) or 'none'})"


UNIDISTILL_FORMAT = register_format(
    CheckpointFormat(
        name="unidistill",
        looks_for="a UniDistill BEVFusion checkpoint ('state_dict' with model.* keys or 'model_state', under "
        "det_head.dense_head. and bev_encoder.backbone_2d.)",
        recognise=lambda checkpoint, state: model_state(state) is not None,
        to_unikd=_to_unikd,
        preset=lambda checkpoint, state: MODEL_SIZES.get(modalities(model_state(state))),
        modalities=lambda checkpoint, state: modalities(model_state(state)),
    )
)
