"""The distiller: distillation terms built from a declarative spec, computed from both networks' outputs.

A spec maps a term name to a dict: `loss` (one of TERM_KINDS), `feature` (the named detector output
it reads: a string, or a list of names for "infonce"; or a module path with `shapes`, see
`build_term`), and the loss's own options. Weights say which
terms are on: a term is built only when its weight is non-zero. For example (UniDistill, camera
student from a LiDAR teacher):

    terms   = {"feature": {"loss": "feature", "feature": "bev"},
               "relation": {"loss": "relation", "feature": "neck"},
               "response": {"loss": "response", "feature": "head"}}
    weights = {"feature": 100.0, "relation": 40.0, "response": 10.0}

`Distiller(terms, weights, student, teacher)(student_outputs, teacher_outputs, batch)` returns
{"distill/<name>": weight * loss} (a term with a second objective adds "distill/<name>/<part>").
Shapes come from the detectors' configurations
(`detector_shapes`), so every adapter and projector exists at construction and trains with the
student. Student and teacher may differ in modality, width and BEV resolution, but their BEV grids
must cover the same metric region. The kinds:

- feature:    UniDistill key-point feature L1 (`FeatureDistillLoss`); a 1x1 conv + BN adapter when
              channels differ (key points are sampled at metric positions, so resolutions may differ);
- relation:   UniDistill key-point relation (`RelationDistillLoss`); no adapter;
- response:   UniDistill response (`ResponseDistillLoss`) on `head`; student maps are resized
              (bilinear) to the teacher's resolution when they differ;
- infonce:    combined multi-level InfoNCE (`MultiLevelInfoNCE`, objects mode) over the listed levels;
- fitnet:     hint MSE through its own adapter (`FitNetLoss`; option `override`);
- masked:     Gaussian-foreground-masked MSE (`GaussianMaskedFeatureLoss`) after `build_adapter`;
- attention:  attention transfer (`AttentionTransferLoss`); student resized when resolutions differ;
- heatmap_kd: temperature heatmap KD (`HeatmapKDLoss`) on all tasks' heatmaps, resized likewise;
- crd:        CRD (`CRDLoss`) on a dense output, memory banks keyed by `batch["index"]` over the
              `num_train_samples` the Distiller is given (option `num_negatives`, default 4096);
- learned_mask: learned-mask distillation (`LearnedMaskDistillLoss`) on the head's input (`neck`);
              while masks learn, "distill/<name>/mask_learning" is the teacher head's detection loss
              on each masked teacher feature plus the Dice diversity (option `mask_learning_until_epoch`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from unikd.distill.adapters import Resize, build_adapter
from unikd.distill.losses import (
    AttentionTransferLoss,
    CRDLoss,
    FeatureDistillLoss,
    FitNetLoss,
    GaussianMaskedFeatureLoss,
    HeatmapKDLoss,
    LearnedMaskDistillLoss,
    MultiLevelInfoNCE,
    RelationDistillLoss,
    ResponseDistillLoss,
)
from unikd.ops.bev_grid import BEVGrid
from unikd.ops.voxelize import grid_size

# UniDistill's placements (DESIGN.md): low-level BEV, high-level BEV, head; the combined InfoNCE
# over four levels. An experiment turns terms on through its weights.
UNIDISTILL_TERMS: dict[str, dict[str, Any]] = {
    "feature": {"loss": "feature", "feature": "bev"},
    "relation": {"loss": "relation", "feature": "neck"},
    "response": {"loss": "response", "feature": "head"},
    "infonce": {"loss": "infonce", "feature": ["voxel_encoder", "middle_encoder", "backbone", "neck"]},
}


def detector_shapes(model: nn.Module) -> dict[str, Any]:
    """Shapes of a BEVFusion detector's named outputs, from its configuration (batch left out).

    Dense BEV outputs (middle_encoder, camera_bev, bev, neck) are (C, H, W); `backbone` is a list
    of them; `voxel_encoder` is (C,); `head` is (H, W), the grid the head runs on.
    """
    config, grid = model.config, model.grid
    size = (grid.height, grid.width)
    shapes: dict[str, Any] = {}
    if model.lidar is not None:
        shapes["voxel_encoder"] = (model.voxel_encoder.out_channels,)
        shapes["middle_encoder"] = (model.middle_encoder.out_channels, *size)
    if model.camera is not None:
        shapes["camera_bev"] = (model.camera.out_channels, *size)
    if model.fuser is not None:
        shapes["bev"] = (config["fuser_channels"], *size)
    else:
        shapes["bev"] = shapes.get("middle_encoder", shapes.get("camera_bev"))
    stride, backbone = 1, []
    for channels, layer_stride in zip(
        config["backbone"]["out_channels"], config["backbone"]["layer_strides"], strict=True
    ):
        stride *= layer_stride
        backbone.append((channels, math.ceil(grid.height / stride), math.ceil(grid.width / stride)))
    shapes["backbone"] = backbone
    shapes["neck"] = (sum(config["neck"]["out_channels"]), *size)
    shapes["head"] = size
    return shapes


def voxel_grid(model: nn.Module) -> BEVGrid | None:
    """The BEV grid of a detector's voxel columns (one cell per voxel in x, y); None without LiDAR."""
    if model.lidar is None:
        return None
    x_min, y_min, _, x_max, y_max, _ = model.config["point_cloud_range"]
    nx, ny, _ = grid_size(model.lidar["voxel_size"], model.config["point_cloud_range"])
    return BEVGrid(x_min, y_min, x_max, y_max, ny, nx)


def level_channels(shape: Any) -> int:
    """Channels of a level for pooling: C of (C, ...) or the sum over a list level's maps."""
    if isinstance(shape, list):
        return sum(level[0] for level in shape)
    return shape[0]


def resize_to(student_size: Sequence[int], teacher_size: Sequence[int]) -> nn.Module:
    """Bilinear resize to the teacher's (H, W) when the student's differs, else identity."""
    if tuple(student_size) == tuple(teacher_size):
        return nn.Identity()
    return Resize(tuple(teacher_size))


def concat_heatmaps(head: Sequence[Mapping[str, torch.Tensor]]) -> torch.Tensor:
    """All tasks' heatmap logits [B, num_classes, H, W]."""
    return torch.cat([task["heatmap"] for task in head], dim=1)


class Term(nn.Module):
    """One distillation term on named outputs; subclasses define `compute`."""

    def __init__(self, feature: str | list[str], grid: BEVGrid) -> None:
        super().__init__()
        self.feature = feature
        self.grid = grid

    def forward(
        self, student: Mapping[str, Any], teacher: Mapping[str, Any], batch: Mapping[str, Any]
    ) -> torch.Tensor:
        return self.compute(student[self.feature], teacher[self.feature], batch)

    def compute(self, student: Any, teacher: Any, batch: Mapping[str, Any]) -> torch.Tensor:
        raise NotImplementedError


class FeatureTerm(Term):
    def __init__(self, feature: str, grid: BEVGrid, student_shape: tuple, teacher_shape: tuple) -> None:
        super().__init__(feature, grid)
        self.adapter = build_adapter(student_shape, (teacher_shape[0], *student_shape[1:]))
        self.loss = FeatureDistillLoss()

    def compute(self, student: torch.Tensor, teacher: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        return self.loss(self.adapter(student), teacher, batch["gt_boxes"], self.grid)


class RelationTerm(Term):
    def __init__(self, feature: str, grid: BEVGrid) -> None:
        super().__init__(feature, grid)
        self.loss = RelationDistillLoss()

    def compute(self, student: torch.Tensor, teacher: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        return self.loss(student, teacher, batch["gt_boxes"], self.grid)


class ResponseTerm(Term):
    def __init__(
        self, feature: str, grid: BEVGrid, student_size: tuple, teacher_size: tuple, **options: Any
    ) -> None:
        super().__init__(feature, grid)
        self.resize = resize_to(student_size, teacher_size)
        self.loss = ResponseDistillLoss(**options)

    def compute(self, student: list, teacher: list, batch: Mapping[str, Any]) -> torch.Tensor:
        student = [{key: self.resize(value) for key, value in task.items()} for task in student]
        return self.loss(student, teacher, batch["gt_boxes"], self.grid)


class InfoNCETerm(Term):
    def __init__(
        self,
        feature: list[str],
        grid: BEVGrid,
        student_channels: dict[str, int],
        teacher_channels: dict[str, int],
        student_voxel_grid: BEVGrid | None,
        teacher_voxel_grid: BEVGrid | None,
        **options: Any,
    ) -> None:
        super().__init__(feature, grid)
        self.student_voxel_grid = student_voxel_grid
        self.teacher_voxel_grid = teacher_voxel_grid
        self.loss = MultiLevelInfoNCE(student_channels, teacher_channels, **options)

    def forward(
        self, student: Mapping[str, Any], teacher: Mapping[str, Any], batch: Mapping[str, Any]
    ) -> torch.Tensor:
        return self.loss(
            {level: student[level] for level in self.feature},
            {level: teacher[level] for level in self.feature},
            batch["gt_boxes"],
            self.grid,
            self.student_voxel_grid,
            self.teacher_voxel_grid,
        )


class FitNetTerm(Term):
    def __init__(
        self, feature: str, grid: BEVGrid, student_shape: tuple, teacher_shape: tuple, **options: Any
    ) -> None:
        super().__init__(feature, grid)
        self.loss = FitNetLoss(student_shape, teacher_shape, **options)

    def compute(self, student: torch.Tensor, teacher: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        return self.loss(student, teacher)


class MaskedTerm(Term):
    def __init__(
        self, feature: str, grid: BEVGrid, student_shape: tuple, teacher_shape: tuple, **options: Any
    ) -> None:
        super().__init__(feature, grid)
        self.adapter = build_adapter(student_shape, teacher_shape)
        self.loss = GaussianMaskedFeatureLoss(**options)

    def compute(self, student: torch.Tensor, teacher: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        return self.loss(self.adapter(student), teacher, batch["gt_boxes"], self.grid)


class AttentionTerm(Term):
    def __init__(
        self, feature: str, grid: BEVGrid, student_shape: tuple, teacher_shape: tuple, **options: Any
    ) -> None:
        super().__init__(feature, grid)
        self.resize = resize_to(student_shape[1:], teacher_shape[1:])
        self.loss = AttentionTransferLoss(**options)

    def compute(self, student: torch.Tensor, teacher: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        return self.loss(self.resize(student), teacher)


class HeatmapKDTerm(Term):
    def __init__(
        self, feature: str, grid: BEVGrid, student_size: tuple, teacher_size: tuple, **options: Any
    ) -> None:
        super().__init__(feature, grid)
        self.resize = resize_to(student_size, teacher_size)
        self.loss = HeatmapKDLoss(**options)

    def compute(self, student: list, teacher: list, batch: Mapping[str, Any]) -> torch.Tensor:
        return self.loss(self.resize(concat_heatmaps(student)), concat_heatmaps(teacher))


class CRDTerm(Term):
    def __init__(
        self,
        feature: str,
        grid: BEVGrid,
        student_shape: tuple,
        teacher_shape: tuple,
        num_train_samples: int | None,
        **options: Any,
    ) -> None:
        super().__init__(feature, grid)
        if num_train_samples is None:
            raise ValueError(
                "a 'crd' term needs the Distiller's num_train_samples (its memory banks are per sample)"
            )
        self.loss = CRDLoss(student_shape[0], teacher_shape[0], num_train_samples, **options)

    def compute(self, student: torch.Tensor, teacher: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        return self.loss(student, teacher, batch["index"].to(student.device))


def head_detection_loss(head: nn.Module, feature: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
    """The sum of a CenterHead's detection losses on `feature` (its input) for the batch's boxes."""
    return sum(head.loss(head(feature), batch["gt_boxes"], batch["gt_labels"]).values())


class LearnedMaskTerm(Term):
    """The teacher's head is held as a plain callable, so its weights stay out of the distiller's state."""

    def __init__(
        self,
        feature: str,
        grid: BEVGrid,
        student_shape: tuple,
        teacher_shape: tuple,
        teacher_head: nn.Module,
        **options: Any,
    ) -> None:
        super().__init__(feature, grid)
        self.loss = LearnedMaskDistillLoss(student_shape, teacher_shape, **options)
        self.teacher_head_loss = functools.partial(head_detection_loss, teacher_head)

    def set_epoch(self, epoch: int) -> None:
        self.loss.set_epoch(epoch)

    def compute(self, student: torch.Tensor, teacher: torch.Tensor, batch: Mapping[str, Any]) -> Any:
        parts = {"": self.loss(student, teacher)}
        if self.training and self.loss.learning_masks:
            parts["mask_learning"] = self.loss.mask_learning_loss(
                teacher, lambda masked: self.teacher_head_loss(masked, batch)
            )
        return parts


TERM_KINDS = (
    "feature",
    "relation",
    "response",
    "infonce",
    "fitnet",
    "masked",
    "attention",
    "heatmap_kd",
    "crd",
    "learned_mask",
)
_DENSE_KINDS = {
    "feature": FeatureTerm,
    "fitnet": FitNetTerm,
    "masked": MaskedTerm,
    "attention": AttentionTerm,
}
_HEAD_KINDS = {"response": ResponseTerm, "heatmap_kd": HeatmapKDTerm}


def build_term(
    name: str,
    spec: Mapping[str, Any],
    student: nn.Module,
    teacher: nn.Module,
    num_train_samples: int | None = None,
) -> Term:
    """The term `name` of a spec entry, with adapters sized from both detectors' shapes.

    A single-feature term may read a submodule's output instead of a named one: `feature` is then the
    module path (in both networks) and the option `shapes` gives {"student": (C, H, W), "teacher": ...}.
    """
    options = dict(spec)
    kind, feature = options.pop("loss", None), options.pop("feature", None)
    if kind not in TERM_KINDS:
        raise ValueError(f"distill term {name!r}: loss must be one of {TERM_KINDS}, got {kind!r}")
    module_shapes = options.pop("shapes", None)
    student_shapes, teacher_shapes = detector_shapes(student), detector_shapes(teacher)
    features = feature if kind == "infonce" else [feature]
    if not isinstance(features, (list, tuple)) or not features:
        raise ValueError(f"distill term {name!r} ({kind}): 'feature' must name outputs, got {feature!r}")
    if module_shapes is not None:
        if kind == "infonce" or set(module_shapes) != {"student", "teacher"}:
            raise ValueError(
                f"distill term {name!r}: 'shapes' is {{'student': (C, H, W), 'teacher': (C, H, W)}} of the "
                f"module path a single-feature term reads, got {module_shapes!r} for a {kind} term"
            )
        if feature in student_shapes or feature in teacher_shapes:
            raise ValueError(f"distill term {name!r}: {feature!r} is a named output; 'shapes' is for module paths")
        for network, model in (("student", student), ("teacher", teacher)):
            if feature not in dict(model.named_modules()):
                raise KeyError(f"distill term {name!r}: {feature!r} is not a module path of the {network}")
        student_shapes[feature] = tuple(module_shapes["student"])
        teacher_shapes[feature] = tuple(module_shapes["teacher"])
    for level in features:
        for network, shapes in (("student", student_shapes), ("teacher", teacher_shapes)):
            if level not in shapes:
                raise KeyError(
                    f"distill term {name!r} reads {level!r}, which the {network} does not output; it has "
                    f"{sorted(shapes)} (a module path needs the term's 'shapes': "
                    "{'student': (C, H, W), 'teacher': (C, H, W)})"
                )
    grid = teacher.grid
    if kind == "infonce":
        return InfoNCETerm(
            list(features),
            grid,
            {level: level_channels(student_shapes[level]) for level in features},
            {level: level_channels(teacher_shapes[level]) for level in features},
            voxel_grid(student),
            voxel_grid(teacher),
            **options,
        )
    s_shape, t_shape = student_shapes[feature], teacher_shapes[feature]
    if kind in _HEAD_KINDS:
        if feature != "head":
            raise ValueError(
                f"distill term {name!r} ({kind}) reads the head outputs ('head'), got {feature!r}"
            )
        return _HEAD_KINDS[kind](feature, grid, s_shape, t_shape, **options)
    if not (isinstance(s_shape, tuple) and len(s_shape) == 3 and len(t_shape) == 3):
        raise ValueError(
            f"distill term {name!r} ({kind}) needs a dense BEV output [B, C, H, W]; {feature!r} is not one"
        )
    if kind == "relation":
        return RelationTerm(feature, grid, **options)
    if kind == "crd":
        return CRDTerm(feature, grid, s_shape, t_shape, num_train_samples, **options)
    if kind == "learned_mask":
        if feature != "neck":
            raise ValueError(
                f"distill term {name!r} (learned_mask) learns its masks through the teacher's head, whose input is 'neck'; got {feature!r}"
            )
        return LearnedMaskTerm(feature, grid, s_shape, t_shape, teacher.head, **options)
    return _DENSE_KINDS[kind](feature, grid, s_shape, t_shape, **options)


class Distiller(nn.Module):
    """The weighted distillation terms of a spec (module doc): student <- teacher.

    `num_train_samples` (the training set's size) is needed by terms that keep per-sample state (crd).
    """

    def __init__(
        self,
        terms: Mapping[str, Mapping[str, Any]],
        weights: Mapping[str, float],
        student: nn.Module,
        teacher: nn.Module,
        num_train_samples: int | None = None,
    ) -> None:
        super().__init__()
        unknown = sorted(set(weights) - set(terms))
        if unknown:
            raise KeyError(
                f"distill weights name terms {unknown} that the spec does not define; defined: {sorted(terms)}"
            )
        regions = [(g.x_min, g.y_min, g.x_max, g.y_max) for g in (student.grid, teacher.grid)]
        if regions[0] != regions[1]:
            raise ValueError(
                f"student and teacher BEV grids cover different regions (x_min, y_min, x_max, y_max): "
                f"{regions[0]} vs {regions[1]}; use the same point_cloud_range"
            )
        self.weights = {name: float(weight) for name, weight in weights.items() if weight != 0}
        self.terms = nn.ModuleDict(
            {
                name: build_term(name, terms[name], student, teacher, num_train_samples)
                for name in self.weights
            }
        )
        # Submodule outputs the terms read beside the named outputs (recorded in both networks by hooks).
        self.module_paths = sorted({terms[name]["feature"] for name in self.weights if "shapes" in terms[name]})

    def set_epoch(self, epoch: int) -> None:
        """Tell the terms that change with the epoch (learned masks stop learning) which one starts."""
        for term in self.terms.values():
            if hasattr(term, "set_epoch"):
                term.set_epoch(epoch)

    def forward(
        self, student: Mapping[str, Any], teacher: Mapping[str, Any], batch: Mapping[str, Any]
    ) -> dict[str, torch.Tensor]:
        """{"distill/<name>[/<part>]": weight * term} from the two detectors' named outputs and the batch."""
        losses = {}
        for name, term in self.terms.items():
            value = term(student, teacher, batch)
            parts = value if isinstance(value, dict) else {"": value}
            for part, loss in parts.items():
                losses["/".join(filter(None, ("distill", name, part)))] = self.weights[name] * loss
        return losses
