"""Detector configurations: the nuScenes reference, a lighter LiDAR student and a small CPU setting.

A configuration is a plain nested dict (so `--exp_options model_config.head.score_threshold=0.2`
reaches any field); `BEVFusion` reads it. Branch dicts are kept only for the modalities used.
"""

from __future__ import annotations

import copy

NUSCENES_RANGE = (-54.0, -54.0, -5.0, 54.0, 54.0, 3.0)
SMALL_RANGE = (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0)

_SIZES: dict[str, dict] = {
    # BEVFusion's nuScenes reference: 0.075 m voxels -> 180x180 BEV of 0.6 m cells.
    "nuscenes": {
        "point_cloud_range": NUSCENES_RANGE,
        "lidar": {
            "voxel_size": (0.075, 0.075, 0.2),
            "max_points_per_voxel": 10,
            "max_voxels": 120000,
            "sparse_encoder": {
                "base_channels": 16,
                "encoder_channels": ((16, 16, 32), (32, 32, 64), (64, 64, 128), (128, 128)),
                "downsample_paddings": (1, 1, (0, 1, 1)),
                "output_channels": 128,
            },
        },
        "camera": {
            "backbone_depth": 50,
            "base_width": 64,
            "out_indices": (1, 2, 3),
            "pretrained": None,
            "neck_channels": 256,
            "context_channels": 80,
            "depth_bins": (1.0, 60.0, 0.5),
            "bev_cell": 0.3,
            "bev_downsample": 2,
        },
        "depth_loss_weight": 3.0,
        "bev_cell": 0.6,
        "fuser_channels": 256,
        "backbone": {"out_channels": (128, 256), "layer_nums": (5, 5), "layer_strides": (1, 2)},
        "neck": {"out_channels": (256, 256), "upsample_strides": (1, 2)},
        "head": {"shared_channels": 64, "head_conv": 64, "score_threshold": 0.1, "post_max_size": 83},
    },
    # Same-modality compression student: 0.1 m voxels, narrower encoder and decoder, 256-channel neck.
    "student": {
        "point_cloud_range": NUSCENES_RANGE,
        "lidar": {
            "voxel_size": (0.1, 0.1, 0.2),
            "max_points_per_voxel": 10,
            "max_voxels": 90000,
            "sparse_encoder": {
                "base_channels": 16,
                "encoder_channels": ((16, 32), (32, 64), (64, 128), (128,)),
                "downsample_paddings": (1, 1, (0, 1, 1)),
                "output_channels": 64,
            },
        },
        "bev_cell": 0.8,
        "backbone": {"out_channels": (64, 128), "layer_nums": (3, 3), "layer_strides": (1, 2)},
        "neck": {"out_channels": (128, 128), "upsample_strides": (1, 2)},
        "head": {"shared_channels": 64, "head_conv": 64, "score_threshold": 0.1, "post_max_size": 83},
    },
    # A CPU setting for tests and demos: 0.4 m voxels, 1.6 m BEV cells, narrow layers, small images.
    "small": {
        "point_cloud_range": SMALL_RANGE,
        "lidar": {
            "voxel_size": (0.4, 0.4, 0.5),
            "max_points_per_voxel": 5,
            "max_voxels": 40000,
            "sparse_encoder": {
                "base_channels": 16,
                "encoder_channels": ((16, 32), (32, 64), (64,)),
                "downsample_paddings": (1, (0, 1, 1)),
                "output_channels": 64,
            },
        },
        "camera": {
            "backbone_depth": 18,
            "base_width": 16,
            "out_indices": (1, 2, 3),  # stride 8: the step time of stride 16 (the decoder dominates), finer rows
            "pretrained": None,
            "neck_channels": 32,
            "context_channels": 32,
            "depth_bins": (1.0, 60.0, 1.0),
            "bev_cell": 0.8,
            "bev_downsample": 2,
        },
        "depth_loss_weight": 3.0,
        "bev_cell": 1.6,
        "fuser_channels": 64,
        "backbone": {"out_channels": (64, 128), "layer_nums": (2, 2), "layer_strides": (1, 2)},
        "neck": {"out_channels": (64, 64), "upsample_strides": (1, 2)},
        "head": {"shared_channels": 32, "head_conv": 32, "score_threshold": 0.1, "post_max_size": 83},
    },
}
_SIZES["student"] = {**copy.deepcopy(_SIZES["nuscenes"]), **_SIZES["student"]}
# mmdet3d's published nuScenes CenterPoint models (`unikd.interop.mmdet3d_centerpoint`), layer for layer:
# centerpoint_voxel0075_second_secfpn_head-circlenms_8xb4-cyclic-20e_nus-3d is the nuScenes LiDAR size
# (sparse shape [41, 1440, 1440], 180x180 BEV); the voxel01 model covers +-51.2 m at 0.1 m voxels
# (sparse shape [41, 1024, 1024], 128x128 BEV of 0.8 m). Both: max 10 points per voxel, 120000 voxels
# at test time, top 500 per task, score > 0.1, circle NMS, 83 kept per task.
_SIZES["centerpoint_0075"] = copy.deepcopy(_SIZES["nuscenes"])
_SIZES["centerpoint_01"] = copy.deepcopy(_SIZES["nuscenes"])
_SIZES["centerpoint_01"].update(point_cloud_range=SMALL_RANGE, bev_cell=0.8)
_SIZES["centerpoint_01"]["lidar"]["voxel_size"] = (0.1, 0.1, 0.2)
# UniDistill's LiDAR detector (BEVFusion_nuscenes_centerhead_lidar_exp, `unikd.interop.unidistill`), layer for
# layer: the nuScenes LiDAR branch and decoder (its VoxelResBackBone8x, HeightCompression and BaseBEVBackbone are
# this SparseEncoder, SECOND and SECONDFPN) and CenterHeadIouAware: an `iou` map per task, decoding ranked by
# score^0.35 * iou^0.65, top 1500 per task, score > 0.1, centres within post_center_range, dims clamped to
# [0.001, 30] m, rotated BEV NMS at IoU 0.1, 100 kept per task; of those up to 600, the 500 best scored
# (the nuScenes devkit's limit per sample, which its own evaluation would stop at). (Its voxelizer keeps
# 120000 voxels in training and testing: the test value of its config is never read.)
_SIZES["unidistill_lidar"] = copy.deepcopy(_SIZES["nuscenes"])
_SIZES["unidistill_lidar"]["head"].update(
    top_k=1500,
    post_max_size=100,
    iou_rectifier=(0.65,) * 6,
    nms_type="rotated",
    nms_iou_threshold=0.1,
    post_center_range=(-61.2, -61.2, -10.0, 61.2, 61.2, 10.0),
    dim_range=(0.001, 30.0),
    max_per_sample=500,
)

# UniDistill's camera encoder (BEVDepth's LSSFPN as its camera and fusion experiments configure it):
# mmdet ResNet-50 (all four stages), SECONDFPN image neck [256, 512, 1024, 2048] -> 4 x 128 at stride
# 16, a 1x1 depth net 512 -> 112 depth bins [2, 58, 0.5] + 256 context channels, BEVDepth's frustum,
# pooled straight into the 0.6 m, 180 x 180 BEV (no downsampling convs); trained without depth
# supervision. Its fusion model gates the concatenation per channel before the 3x3 conv to 256.
# (`unikd.interop.unidistill_camera`.) Sizes unidistill_camera (modalities camera) and unidistill_fusion
# (lidar + camera): these with unidistill_lidar's LiDAR branch, decoder and head.
UNIDISTILL_CAMERA = {
    "backbone_depth": 50,
    "base_width": 64,
    "out_indices": (0, 1, 2, 3),
    "pretrained": None,
    "neck": "secondfpn",
    "neck_channels": (128, 128, 128, 128),
    "neck_upsample_strides": (0.25, 0.5, 1, 2),
    "context_channels": 256,
    "depth_bins": (2.0, 58.0, 0.5),
    "bev_cell": 0.6,
    "bev_downsample": 1,
    "depth_net": "1x1",
    "geometry": "bevdepth",
}
UNIDISTILL_FUSER = {"fuser_channels": 256, "fuser_attention": True}
for _size in ("unidistill_camera", "unidistill_fusion"):
    _SIZES[_size] = copy.deepcopy(_SIZES["unidistill_lidar"])
    _SIZES[_size].update(camera=copy.deepcopy(UNIDISTILL_CAMERA), depth_loss_weight=0.0, **UNIDISTILL_FUSER)

MODALITIES = ("lidar", "camera")


def model_config(size: str, modalities: tuple[str, ...]) -> dict:
    """The configuration of `size` for the given modalities (a fresh copy)."""
    if size not in _SIZES:
        raise ValueError(f"unknown model size {size!r}; expected one of {sorted(_SIZES)}")
    unknown = set(modalities) - set(MODALITIES)
    if unknown or not modalities:
        raise ValueError(f"modalities must be a non-empty subset of {MODALITIES}, got {modalities}")
    config = copy.deepcopy(_SIZES[size])
    for modality in MODALITIES:
        if modality not in modalities:
            config.pop(modality, None)
    if set(modalities) != set(MODALITIES):
        config.pop("fuser_channels", None)
        config.pop("fuser_attention", None)
    if "camera" not in modalities:
        config.pop("depth_loss_weight", None)
    return config
