"""Detector configurations: presets as named constants derived from each other, and `model_config`.

A preset is a `Preset` (its name, once, and its configuration); most are `derive`d from another with what
differs. Every preset is a constant of this module, registered into `PRESETS` (name -> preset) where it is
defined; the comment above each says where it comes from. Adding one is one more constant here,
`NAME = register_preset(derive(BASE, "name", <the sections that differ>))`. The name is what
`--exp_options preset=...` (or `model_size=...`) selects and what checkpoints record; other modules refer
to a preset by its constant (`SMALL.name`).

A configuration is a plain nested dict (so `--exp_options model_config.head.score_threshold=0.2` reaches any
field); `BEVFusion` reads it: `lidar` and `camera` (the branches; `camera.backbone` and `camera.depth_net` name
registered parts, `unikd.models.registry`), `fuser` (its `type` a registered fuser; a ConvFuser of
`fuser_channels` when absent), `backbone` and `neck` (the decoder), and the head of the task: `head` (its
`type` a registered head, "center" when absent) for detection, `seg_head` (map segmentation) for segmentation.
`model_config` keeps the branches of the modalities used and the head of the task.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, NamedTuple

from unikd.data.image_aug import ImageAugConfig
from unikd.registry import Registry


@dataclass(frozen=True)
class Preset:
    """A named detector configuration and the image augmentation whose images its camera branch reads (a data
    setting, so not in `config`; BEVFusion's nuScenes default unless set). Never changed in place: `model_config`
    and `derive` copy it."""

    name: str
    config: dict[str, Any]
    image_aug: ImageAugConfig = ImageAugConfig()


class Replace(NamedTuple):
    """In `derive`: this section in place of the base's whole section (not merged into it)."""

    section: dict[str, Any]


REMOVE = object()  # in `derive`: the base's section is removed


def derive(base: Preset, name: str, image_aug: ImageAugConfig | None = None, **changes: Any) -> Preset:
    """The preset `name`: a deep copy of `base` with `changes`. A dict is merged into the base's section of
    that name key by key (recursively; a new section when the base has none); `Replace(section)` replaces
    the section whole; `REMOVE` deletes it; any other value replaces the base's. The image augmentation is
    the base's unless `image_aug` is given."""
    return Preset(name, _merged(base.config, changes, name), base.image_aug if image_aug is None else image_aug)


def _merged(base: dict[str, Any], changes: dict[str, Any], where: str) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in changes.items():
        path = f"{where}.{key}"
        if value is REMOVE:
            if key not in merged:
                raise KeyError(f"{path}: no such section to remove; the base has {sorted(merged)}")
            del merged[key]
        elif isinstance(value, Replace):
            merged[key] = copy.deepcopy(value.section)
        elif isinstance(value, dict):
            if not isinstance(merged.get(key, {}), dict):
                raise TypeError(f"{path}: a dict cannot be merged into {merged[key]!r}; use Replace")
            merged[key] = _merged(merged.get(key, {}), value, path)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


PRESETS: Registry[Preset] = Registry("preset", "model size (preset)")


def register_preset(preset: Preset) -> Preset:
    """Make `preset` selectable by its name (`PRESETS`, `model_config`); a name is registered once."""
    return PRESETS.add(preset.name, preset)


NUSCENES_RANGE = (-54.0, -54.0, -5.0, 54.0, 54.0, 3.0)
SMALL_RANGE = (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0)

# BEVFusion's nuScenes reference: 0.075 m voxels -> 180x180 BEV of 0.6 m cells.
NUSCENES = register_preset(
    Preset(
        "nuscenes",
        {
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
    )
)

# Same-modality compression student: 0.1 m voxels, narrower encoder and decoder, 256-channel neck.
STUDENT = register_preset(
    derive(
        NUSCENES,
        "student",
        lidar={
            "voxel_size": (0.1, 0.1, 0.2),
            "max_voxels": 90000,
            "sparse_encoder": {"encoder_channels": ((16, 32), (32, 64), (64, 128), (128,)), "output_channels": 64},
        },
        bev_cell=0.8,
        backbone={"out_channels": (64, 128), "layer_nums": (3, 3)},
        neck={"out_channels": (128, 128)},
    )
)

# A CPU setting for tests and demos: 0.4 m voxels, 1.6 m BEV cells, narrow layers, small images (128x352; JPEGs
# decoded at 1/4 or 1/2 scale, `reduced_decode`: 3x faster, same geometry).
SMALL = register_preset(
    Preset(
        "small",
        {
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
        image_aug=ImageAugConfig(final_size=(128, 352), train_resize=(0.2, 0.26), test_resize=0.23, reduced_decode=True),
    )
)

# STUDENT's counterpart on the CPU, for same-modality compression on synthetic data: SMALL's sparse encoder, SECOND
# and SECONDFPN at half its widths (the 16-channel input layers kept; half the parameters) on SMALL's grid, so that
# its BEV maps align with a SMALL teacher's cell for cell.
SMALL_STUDENT = register_preset(
    derive(
        SMALL,
        "small_student",
        lidar={"sparse_encoder": {"encoder_channels": ((16, 16), (16, 32), (32,)), "output_channels": 32}},
        backbone={"out_channels": (32, 64)},
        neck={"out_channels": (32, 32)},
    )
)

# mmdet3d's published nuScenes CenterPoint models (`unikd.interop.mmdet3d_centerpoint`), layer for layer:
# centerpoint_voxel0075_second_secfpn_head-circlenms_8xb4-cyclic-20e_nus-3d is the nuScenes LiDAR size
# (sparse shape [41, 1440, 1440], 180x180 BEV); the voxel01 model covers +-51.2 m at 0.1 m voxels
# (sparse shape [41, 1024, 1024], 128x128 BEV of 0.8 m). Both: max 10 points per voxel, 120000 voxels
# at test time, top 500 per task, score > 0.1, circle NMS, 83 kept per task.
CENTERPOINT_0075 = register_preset(derive(NUSCENES, "centerpoint_0075"))
CENTERPOINT_01 = register_preset(
    derive(
        NUSCENES, "centerpoint_01", point_cloud_range=SMALL_RANGE, bev_cell=0.8, lidar={"voxel_size": (0.1, 0.1, 0.2)}
    )
)

# UniDistill's LiDAR detector (BEVFusion_nuscenes_centerhead_lidar_exp, `unikd.interop.unidistill`), layer for
# layer: the nuScenes LiDAR branch and decoder (its VoxelResBackBone8x, HeightCompression and BaseBEVBackbone are
# this SparseEncoder, SECOND and SECONDFPN) and CenterHeadIouAware: an `iou` map per task, decoding ranked by
# score^0.35 * iou^0.65, top 1500 per task, score > 0.1, centres within post_center_range, dims clamped to
# [0.001, 30] m, rotated BEV NMS at IoU 0.1, 100 kept per task; of those up to 600, the 500 best scored
# (the nuScenes devkit's limit per sample, which its own evaluation would stop at). (Its voxelizer keeps
# 120000 voxels in training and testing: the test value of its config is never read.)
UNIDISTILL_LIDAR = register_preset(
    derive(
        NUSCENES,
        "unidistill_lidar",
        head={
            "top_k": 1500,
            "post_max_size": 100,
            "iou_rectifier": (0.65,) * 6,
            "nms_type": "rotated",
            "nms_iou_threshold": 0.1,
            "post_center_range": (-61.2, -61.2, -10.0, 61.2, 61.2, 10.0),
            "dim_range": (0.001, 30.0),
            "max_per_sample": 500,
        },
    )
)

# mmdet3d's BEVFusion-L head (projects/BEVFusion, bevfusion_lidar_voxel0075_second_secfpn_8xb4-cyclic-20e_nus-3d):
# a TransFusionHead (`unikd.models.heads.transfusion_head`) of 200 queries, 128 channels, 8 attention heads, a
# 256-channel FFN, one decoder layer, peaks in 3x3 windows, no score threshold, centres within post_center_range,
# no NMS. Its LiDAR branch and decoder are the nuScenes size's: BEVFusionSparseEncoder is CenterPoint's
# SparseEncoder in x-major order (`unikd.interop.bevfusion` carries its weights across), SECOND and SECONDFPN the
# same; its voxelizer keeps up to 160000 voxels at test time (the teacher's case; 120000 in training).
BEVFUSION_LIDAR = register_preset(
    derive(
        NUSCENES,
        "bevfusion_lidar",
        lidar={"max_voxels": 160000},
        head=Replace(
            {
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
        ),
    )
)
# The small CPU setting with a TransFusionHead at small width (tests, synthetic training).
SMALL_TRANSFUSION = register_preset(
    derive(
        SMALL,
        "small_transfusion",
        head=Replace(
            {
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
        ),
    )
)

# UniDistill's camera encoder (BEVDepth's LSSFPN as its camera and fusion experiments configure it):
# mmdet ResNet-50 (all four stages), SECONDFPN image neck [256, 512, 1024, 2048] -> 4 x 128 at stride
# 16, a 1x1 depth net 512 -> 112 depth bins [2, 58, 0.5] + 256 context channels, BEVDepth's frustum,
# pooled straight into the 0.6 m, 180 x 180 BEV (no downsampling convs); trained without depth
# supervision. Its fusion model gates the concatenation per channel before the 3x3 conv to 256.
# (`unikd.interop.unidistill_camera`.)
UNIDISTILL_CAMERA_BRANCH = {
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
# UniDistill's camera (modalities camera) and fusion (lidar + camera) models: these with unidistill_lidar's
# LiDAR branch, decoder and head; one network under the two names its experiments use. Its images: UniDistill's
# ida_aug_cfg, resize in (0.386, 0.55) in training, max(256 / 900, 704 / 1600) = 0.44 in testing.
UNIDISTILL_CAMERA = register_preset(
    derive(
        UNIDISTILL_LIDAR,
        "unidistill_camera",
        image_aug=ImageAugConfig(train_resize=(0.386, 0.55), test_resize=0.44),
        camera=Replace(UNIDISTILL_CAMERA_BRANCH),
        depth_loss_weight=0.0,
        **UNIDISTILL_FUSER,
    )
)
UNIDISTILL_FUSION = register_preset(derive(UNIDISTILL_CAMERA, "unidistill_fusion"))

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
# BEVFusion-LC: bevfusion_lidar with this camera and the ConvFuser [80, 256] -> 256.
BEVFUSION_FUSION = register_preset(
    derive(
        BEVFUSION_LIDAR, "bevfusion_fusion", camera=Replace(BEVFUSION_CAMERA), depth_loss_weight=0.0, fuser_channels=256
    )
)
# Its CPU variant for tests and demos (small_transfusion with it): a Swin of three stages at width 16 (stages 1-2
# out, strides 8 and 16), the small camera's widths, grid and depth bins.
SMALL_BEVFUSION_CAMERA = dict(
    BEVFUSION_CAMERA,
    swin={"embed_dims": 16, "depths": (2, 2, 2), "num_heads": (1, 2, 4), "window_size": 7, "drop_path_rate": 0.1},
    out_indices=(1, 2),
    neck_channels=32,
    context_channels=32,
    depth_bins=(1.0, 60.0, 1.0),
    bev_cell=0.8,
)
SMALL_BEVFUSION = register_preset(
    derive(
        SMALL_TRANSFUSION, "small_bevfusion", camera=Replace(SMALL_BEVFUSION_CAMERA), depth_loss_weight=0.0
    )
)

# BEVFusion's nuScenes map segmentation (mit-han-lab/bevfusion configs/nuscenes/seg: lidar-centerpoint-bev128,
# camera-bev256d2, fusion-bev256d2-lss): +-51.2 m, 0.1 m voxels -> 128 x 128 BEV of 0.8 m (the camera's 0.4 m
# LSS grid downsampled twice), no depth supervision (LSSTransform), SECOND/SECONDFPN to 512 channels, no
# object head; BEVSegmentationHead: the BEV resampled to 200 x 200 cells of 0.5 m over +-50 m, two
# conv3x3-BN-ReLU of the input's width, 1x1 to the 6 map classes, sigmoid focal loss. Differences: the
# camera backbone is unikd's ResNet-50 (BEVFusion: Swin-T), and the camera-only model keeps SECOND/SECONDFPN
# (BEVFusion: GeneralizedResNet + LSSFPN to 256 channels).
NUSCENES_SEG = register_preset(
    derive(
        NUSCENES,
        "nuscenes_seg",
        head=REMOVE,
        point_cloud_range=SMALL_RANGE,
        lidar={"voxel_size": (0.1, 0.1, 0.2)},
        camera={"bev_cell": 0.4, "bev_downsample": 2},
        bev_cell=0.8,
        depth_loss_weight=0.0,
        seg_head={"output_range": (-50.0, -50.0, 50.0, 50.0), "output_cell": 0.5, "num_layers": 2},
    )
)

# VeXKD's modality-general fusion module (`unikd.models.mgfm`) in place of the ConvFuser: learnable BEV queries,
# one per cell of the fused grid, attend to the camera and LiDAR BEV maps through deformable attention
# (BEVFormer's widths at the nuScenes size: 256 channels, 8 heads, 4 points, FFN 512; 3 blocks).
MGFM_FUSER = {"type": "mgfm", "embed_dims": 256, "num_heads": 8, "num_points": 4, "num_blocks": 3,
              "ffn_channels": 512, "modality_dropout": 0.0}
NUSCENES_MGFM = register_preset(derive(NUSCENES, "nuscenes_mgfm", fuser=MGFM_FUSER))
SMALL_MGFM = register_preset(
    derive(SMALL, "small_mgfm", fuser=dict(MGFM_FUSER, embed_dims=64, num_heads=4, num_blocks=2, ffn_channels=128))
)


MODALITIES = ("lidar", "camera")
# the head a task trains; depth pretraining (`unikd.exps.depth_pretrain_exp`) trains the camera branch alone, no head
HEAD_OF_TASK = {"detection": "head", "segmentation": "seg_head", "depth": None}


def image_aug_for(size: str) -> ImageAugConfig:
    """The image augmentation of the preset named `size`: what its camera branch reads unless an experiment sets
    its own."""
    return PRESETS.lookup(size).image_aug


def model_config(size: str, modalities: tuple[str, ...], task: str = "detection") -> dict:
    """The configuration of the preset named `size` for the given modalities and task (a fresh copy)."""
    preset = PRESETS.lookup(size)
    unknown = set(modalities) - set(MODALITIES)
    if unknown or not modalities:
        raise ValueError(f"modalities must be a non-empty subset of {MODALITIES}, got {modalities}")
    if task not in HEAD_OF_TASK:
        raise ValueError(f"unknown task {task!r}; expected one of {tuple(HEAD_OF_TASK)}")
    head = HEAD_OF_TASK[task]
    if head is not None and head not in preset.config:
        sizes = sorted(name for name, candidate in PRESETS.items() if head in candidate.config)
        raise ValueError(f"model size {size!r} has no {task} head ({head!r}); sizes with one: {sizes}")
    config = copy.deepcopy(preset.config)
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
