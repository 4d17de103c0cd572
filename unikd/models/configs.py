"""Detector configurations (presets), by name: `model_config(size, modalities, task)`.

The presets: `nuscenes` (BEVFusion's reference sizes), `student` (a lighter LiDAR student), `small` (a CPU
setting for tests and demos) and its variants (`small_transfusion`, `small_bevfusion`, `small_mgfm`), the
published networks that other frameworks' checkpoints load into (`centerpoint_0075`, `centerpoint_01`,
`unidistill_lidar` / `_camera` / `_fusion`, `bevfusion_lidar` / `_fusion`), `nuscenes_mgfm` and `nuscenes_seg`.
A configuration is a plain nested dict (so `--exp_options model_config.head.score_threshold=0.2`
reaches any field); `BEVFusion` reads it. Branch dicts are kept only for the modalities used, and
only the head of the task: `head` (a CenterHead, or a TransFusionHead with `type: transfusion`) for
detection, `seg_head` (map segmentation) for segmentation.
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
        # BEVFusion's map grid (200 x 200 cells of 0.5 m), narrow layers
        "seg_head": {"output_range": (-50.0, -50.0, 50.0, 50.0), "output_cell": 0.5, "channels": 16},
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

# mmdet3d's BEVFusion-L head (projects/BEVFusion, bevfusion_lidar_voxel0075_second_secfpn_8xb4-cyclic-20e_nus-3d):
# a TransFusionHead (`unikd.models.heads.transfusion_head`) of 200 queries, 128 channels, 8 attention heads, a
# 256-channel FFN, one decoder layer, peaks in 3x3 windows, no score threshold, centres within post_center_range,
# no NMS. Its LiDAR branch and decoder are the nuScenes size's: BEVFusionSparseEncoder is CenterPoint's
# SparseEncoder in x-major order (`unikd.interop.bevfusion` carries its weights across), SECOND and SECONDFPN the
# same; its voxelizer keeps up to 160000 voxels at test time (the teacher's case; 120000 in training).
_SIZES["bevfusion_lidar"] = copy.deepcopy(_SIZES["nuscenes"])
_SIZES["bevfusion_lidar"]["lidar"]["max_voxels"] = 160000
_SIZES["bevfusion_lidar"]["head"] = {
    "type": "transfusion",
    "num_proposals": 200,
    "hidden_channels": 128,
    "num_heads": 8,
    "ffn_channels": 256,
    "num_decoder_layers": 1,
    "nms_kernel_size": 3,
    "score_threshold": None,
    "post_center_range": (-61.2, -61.2, -10.0, 61.2, 61.2, 10.0),
}
# The small CPU setting with a TransFusionHead at small width (tests, synthetic training).
_SIZES["small_transfusion"] = copy.deepcopy(_SIZES["small"])
_SIZES["small_transfusion"]["head"] = {
    "type": "transfusion",
    "num_proposals": 100,
    "hidden_channels": 32,
    "num_heads": 4,
    "ffn_channels": 64,
    "head_conv": 32,
    "num_decoder_layers": 1,
    "nms_kernel_size": 3,
    "score_threshold": None,
    "post_center_range": (-61.2, -61.2, -10.0, 61.2, 61.2, 10.0),
}

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

# BEVFusion's camera branch (mmdet3d projects/BEVFusion, bevfusion_lidar-cam_voxel0075_second_secfpn_8xb4-cyclic-
# 20e_nus-3d; `unikd.interop.bevfusion_camera`): Swin-T (embed 96, depths [2, 2, 6, 2], heads [3, 6, 12, 24],
# window 7, drop path 0.2) stages 1-3, GeneralizedLSSFPN [192, 384, 768] -> 256 at stride 8 (unikd's lss neck:
# the view transform reads its first output), DepthLSSTransform: 256x704 images -> 32x88 features, 118 depth bins
# [1, 60, 0.5] at the bin starts, 80 context channels, the depth net also reading the LiDAR depth image, the
# frustum of BEVDepth (linspace over the image, cells by truncation) over x, y in [-54, 54) at 0.3 m and one z bin
# over [-10, 10] m, then the stride-2 downsample convs to 180 x 180. No depth supervision.
BEVFUSION_CAMERA = {
    "backbone": "swin",
    "swin": {"embed_dims": 96, "depths": (2, 2, 6, 2), "num_heads": (3, 6, 12, 24), "window_size": 7, "drop_path_rate": 0.2},
    "out_indices": (1, 2, 3),
    "neck": "lss",
    "neck_channels": 256,
    "context_channels": 80,
    "depth_bins": (1.0, 60.0, 0.5),
    "bev_cell": 0.3,
    "bev_downsample": 2,
    "depth_net": "depth_lss",
    "geometry": "bevdepth",
    "splat_z_range": (-10.0, 10.0),
}
# Size bevfusion_fusion (BEVFusion-LC): bevfusion_lidar with this camera and the ConvFuser [80, 256] -> 256.
_SIZES["bevfusion_fusion"] = copy.deepcopy(_SIZES["bevfusion_lidar"])
_SIZES["bevfusion_fusion"].update(camera=copy.deepcopy(BEVFUSION_CAMERA), depth_loss_weight=0.0, fuser_channels=256)
# Its CPU variant for tests and demos (size small_bevfusion: small_transfusion with it): a Swin of three stages at
# width 16 (stages 1-2 out, strides 8 and 16), the small camera's widths, grid and depth bins.
SMALL_BEVFUSION_CAMERA = dict(
    BEVFUSION_CAMERA,
    swin={"embed_dims": 16, "depths": (2, 2, 2), "num_heads": (1, 2, 4), "window_size": 7, "drop_path_rate": 0.1},
    out_indices=(1, 2),
    neck_channels=32,
    context_channels=32,
    depth_bins=(1.0, 60.0, 1.0),
    bev_cell=0.8,
)
_SIZES["small_bevfusion"] = copy.deepcopy(_SIZES["small_transfusion"])
_SIZES["small_bevfusion"].update(camera=copy.deepcopy(SMALL_BEVFUSION_CAMERA), depth_loss_weight=0.0)

# BEVFusion's nuScenes map segmentation (mit-han-lab/bevfusion configs/nuscenes/seg: lidar-centerpoint-bev128,
# camera-bev256d2, fusion-bev256d2-lss): +-51.2 m, 0.1 m voxels -> 128 x 128 BEV of 0.8 m (the camera's 0.4 m
# LSS grid downsampled twice), no depth supervision (LSSTransform), SECOND/SECONDFPN to 512 channels, no
# object head; BEVSegmentationHead: the BEV resampled to 200 x 200 cells of 0.5 m over +-50 m, two
# conv3x3-BN-ReLU of the input's width, 1x1 to the 6 map classes, sigmoid focal loss. Differences: the
# camera backbone is unikd's ResNet-50 (BEVFusion: Swin-T), and the camera-only model keeps SECOND/SECONDFPN
# (BEVFusion: GeneralizedResNet + LSSFPN to 256 channels).
_SIZES["nuscenes_seg"] = copy.deepcopy(_SIZES["nuscenes"])
del _SIZES["nuscenes_seg"]["head"]
_SIZES["nuscenes_seg"]["lidar"]["voxel_size"] = (0.1, 0.1, 0.2)
_SIZES["nuscenes_seg"]["camera"].update(bev_cell=0.4, bev_downsample=2)
_SIZES["nuscenes_seg"].update(
    point_cloud_range=SMALL_RANGE,
    bev_cell=0.8,
    depth_loss_weight=0.0,
    seg_head={"output_range": (-50.0, -50.0, 50.0, 50.0), "output_cell": 0.5, "num_layers": 2},
)

# VeXKD's modality-general fusion module (`unikd.models.mgfm`) in place of the ConvFuser: learnable BEV queries,
# one per cell of the fused grid, attend to the camera and LiDAR BEV maps through deformable attention
# (BEVFormer's widths at the nuScenes size: 256 channels, 8 heads, 4 points, FFN 512; 3 blocks).
MGFM_FUSER = {"type": "mgfm", "embed_dims": 256, "num_heads": 8, "num_points": 4, "num_blocks": 3,
              "ffn_channels": 512, "modality_dropout": 0.0}
_SIZES["nuscenes_mgfm"] = copy.deepcopy(_SIZES["nuscenes"])
_SIZES["nuscenes_mgfm"]["fuser"] = dict(MGFM_FUSER)
_SIZES["small_mgfm"] = copy.deepcopy(_SIZES["small"])
_SIZES["small_mgfm"]["fuser"] = dict(MGFM_FUSER, embed_dims=64, num_heads=4, num_blocks=2, ffn_channels=128)

MODALITIES = ("lidar", "camera")
HEAD_OF_TASK = {"detection": "head", "segmentation": "seg_head"}


def model_config(size: str, modalities: tuple[str, ...], task: str = "detection") -> dict:
    """The configuration of `size` for the given modalities and task (a fresh copy)."""
    if size not in _SIZES:
        raise ValueError(f"unknown model size {size!r}; expected one of {sorted(_SIZES)}")
    unknown = set(modalities) - set(MODALITIES)
    if unknown or not modalities:
        raise ValueError(f"modalities must be a non-empty subset of {MODALITIES}, got {modalities}")
    if task not in HEAD_OF_TASK:
        raise ValueError(f"unknown task {task!r}; expected one of {tuple(HEAD_OF_TASK)}")
    head = HEAD_OF_TASK[task]
    if head not in _SIZES[size]:
        sizes = sorted(name for name, config in _SIZES.items() if head in config)
        raise ValueError(f"model size {size!r} has no {task} head ({head!r}); sizes with one: {sizes}")
    config = copy.deepcopy(_SIZES[size])
    for other in HEAD_OF_TASK.values():
        if other != head:
            config.pop(other, None)
    for modality in MODALITIES:
        if modality not in modalities:
            config.pop(modality, None)
    if set(modalities) != set(MODALITIES):
        config.pop("fuser_channels", None)
        config.pop("fuser_attention", None)
        config.pop("fuser", None)
    if "camera" not in modalities:
        config.pop("depth_loss_weight", None)
    return config
