"""The distiller: distillation terms built from a declarative spec, computed from both networks' outputs.

A spec maps a term name to a dict: `kind` (a registered term kind, `unikd.distill.losses.TERM_KINDS`),
`source` (what the kind reads: a named detector output, a list of them for a "levels" kind, or a
module path with `shapes`, see below) and the kind's own options. Weights say which terms are on: a
term is built only when its weight is non-zero. For example (UniDistill, camera student from a LiDAR
teacher):

    terms   = {"feature": {"kind": "feature", "source": "bev"},
               "relation": {"kind": "relation", "source": "neck"},
               "response": {"kind": "response", "source": "head"}}
    weights = {"feature": 100.0, "relation": 40.0, "response": 10.0}

Each kind is built from the two detectors' output shapes (`BEVFusion.output_shapes`), so every adapter
and projector exists at construction and trains with the student. Student and teacher may differ in
modality, width and BEV resolution, but their BEV grids must cover the same metric region.

A "dense" term may read a submodule's output instead of a named one: `source` is then the module path
(in both networks) and the option `shapes` gives {"student": (C, H, W), "teacher": (C, H, W)}. The
distiller records those outputs itself: run both networks inside `Distiller.recording(student,
teacher)`, then call the distiller with their named outputs:

    with distiller.recording(student, teacher):
        student_outputs = student(batch)
        teacher_outputs = teacher(batch)
    losses = distiller(student_outputs, teacher_outputs, batch)

which returns {"distill/<name>": weight * loss} (a term with a second objective adds
"distill/<name>/<part>").
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from unikd.distill.losses import TERM_KINDS, DistillTerm, TermSetup
from unikd.distill.recorder import FeatureRecorder

# UniDistill's placements (docs/ARCHITECTURE.md, named outputs): low-level BEV, high-level BEV, head; the combined InfoNCE
# over four levels. An experiment turns terms on through its weights.
UNIDISTILL_TERMS: dict[str, dict[str, Any]] = {
    "feature": {"kind": "feature", "source": "bev"},
    "relation": {"kind": "relation", "source": "neck"},
    "response": {"kind": "response", "source": "head"},
    "infonce": {"kind": "infonce", "source": ["voxel_encoder", "middle_encoder", "backbone", "neck"]},
}
# Map segmentation pairings: the map covers the whole grid, not only the boxes, so the BEV features are
# imitated everywhere (fitnet) or under the boxes' Gaussian masks (masked), and the response is the
# per-cell binary KL of the segmentation logits.
SEGMENTATION_TERMS: dict[str, dict[str, Any]] = {
    "fitnet": {"kind": "fitnet", "source": "bev"},
    "masked": {"kind": "masked", "source": "bev"},
    "seg_response": {"kind": "seg_response", "source": "seg"},
}


def term_kind(name: str, spec: Mapping[str, Any]) -> type[DistillTerm]:
    """The registered class of a spec entry's `kind`."""
    renamed = sorted({"loss", "feature"} & set(spec))
    if renamed:
        raise ValueError(f"distill term {name!r}: the spec keys 'loss' and 'feature' are now 'kind' and 'source', got {renamed}")
    try:
        return TERM_KINDS.lookup(spec.get("kind"))
    except ValueError as error:
        raise ValueError(f"distill term {name!r}: {error}") from None


def needs_train_samples(terms: Mapping[str, Mapping[str, Any]], weights: Mapping[str, float]) -> bool:
    """Whether a term that is on keeps per-sample state (its Distiller needs `num_train_samples`)."""
    return any(term_kind(name, terms[name]).needs_train_samples for name, w in weights.items() if w and name in terms)


def _read_shapes(
    name: str, kind: type[DistillTerm], source: Any, module_shapes: Any, student: nn.Module, teacher: nn.Module
) -> tuple[Any, Any]:
    """The (student, teacher) shapes of what a term reads, checked against what the kind reads."""
    student_shapes, teacher_shapes = student.output_shapes(), teacher.output_shapes()
    if kind.reads == "levels":
        if not isinstance(source, (list, tuple)) or not source or module_shapes is not None:
            raise ValueError(f"distill term {name!r} ({kind.kind}): 'source' must list named outputs, got {source!r}")
        levels = list(source)
    else:
        if not isinstance(source, str):
            raise ValueError(f"distill term {name!r} ({kind.kind}): 'source' must name one output, got {source!r}")
        levels = [source]
    if kind.reads == "head" and source != "head":
        raise ValueError(f"distill term {name!r} ({kind.kind}) reads the head outputs ('head'), got {source!r}")
    if kind.reads == "head":
        for network, shapes in (("student", student_shapes), ("teacher", teacher_shapes)):
            if "head" not in shapes:
                raise ValueError(
                    f"distill term {name!r} ({kind.kind}) reads the detection head's outputs, but the {network} has "
                    "no detection head (model config 'head'; a segmentation model outputs 'seg')"
                )
    if module_shapes is not None:
        if kind.reads != "dense" or set(module_shapes) != {"student", "teacher"}:
            raise ValueError(
                f"distill term {name!r}: 'shapes' is {{'student': (C, H, W), 'teacher': (C, H, W)}} of the "
                f"module path a dense term reads, got {module_shapes!r} for a {kind.kind} term"
            )
        if source in student_shapes or source in teacher_shapes:
            raise ValueError(f"distill term {name!r}: {source!r} is a named output; 'shapes' is for module paths")
        for network, model in (("student", student), ("teacher", teacher)):
            if source not in dict(model.named_modules()):
                raise KeyError(f"distill term {name!r}: {source!r} is not a module path of the {network}")
        student_shapes[source] = tuple(module_shapes["student"])
        teacher_shapes[source] = tuple(module_shapes["teacher"])
    for level in levels:
        for network, shapes in (("student", student_shapes), ("teacher", teacher_shapes)):
            if level not in shapes:
                raise KeyError(
                    f"distill term {name!r} reads {level!r}, which the {network} does not output; it has "
                    f"{sorted(shapes)} (a module path needs the term's 'shapes': "
                    "{'student': (C, H, W), 'teacher': (C, H, W)})"
                )
    if kind.reads == "levels":
        return {level: student_shapes[level] for level in levels}, {level: teacher_shapes[level] for level in levels}
    shapes = student_shapes[source], teacher_shapes[source]
    if kind.reads == "dense" and not all(isinstance(shape, tuple) and len(shape) == 3 for shape in shapes):
        raise ValueError(
            f"distill term {name!r} ({kind.kind}) needs a dense BEV output [B, C, H, W]; {source!r} is not one"
        )
    return shapes


def build_term(
    name: str, spec: Mapping[str, Any], student: nn.Module, teacher: nn.Module, num_train_samples: int | None
) -> DistillTerm:
    """The term `name` of a spec entry, built by its kind from both detectors' shapes."""
    options = dict(spec)
    kind = term_kind(name, options)
    del options["kind"]
    source, module_shapes = options.pop("source", None), options.pop("shapes", None)
    student_shape, teacher_shape = _read_shapes(name, kind, source, module_shapes, student, teacher)
    setup = TermSetup(
        tuple(source) if kind.reads == "levels" else source,
        student_shape,
        teacher_shape,
        teacher.grid,
        student,
        teacher,
        num_train_samples,
    )
    try:
        term = kind.build(setup, **options)
    except TypeError as error:
        raise TypeError(f"distill term {name!r} ({kind.kind}): options {sorted(options)}: {error}") from error
    missing = sorted(set(term.teacher_context) - set(teacher.output_shapes()))
    if missing:
        raise KeyError(f"distill term {name!r} ({kind.kind}) reads the teacher outputs {missing}, which it lacks")
    return term


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
            {name: build_term(name, terms[name], student, teacher, num_train_samples) for name in self.weights}
        )
        self.sources = {name: terms[name]["source"] for name in self.weights}
        # Submodule outputs the terms read beside the named outputs, recorded by `recording`.
        self.module_paths = sorted({terms[name]["source"] for name in self.weights if "shapes" in terms[name]})
        self._recorders: dict[str, FeatureRecorder] = {}

    @contextlib.contextmanager
    def recording(self, student: nn.Module, teacher: nn.Module) -> Iterator[None]:
        """Record the module-path outputs the terms read while both networks run in the block (hooks
        removed at its end); the next call of the distiller reads them."""
        self._recorders = {
            "student": FeatureRecorder(student, self.module_paths),
            "teacher": FeatureRecorder(teacher, self.module_paths),
        }
        try:
            yield
        finally:
            for recorder in self._recorders.values():
                recorder.remove()

    def inputs(self, student: Mapping[str, Any], teacher: Mapping[str, Any]) -> tuple[Mapping, Mapping]:
        """Both networks' named outputs with the recorded module-path outputs added (the recording ends)."""
        if self.module_paths and not self._recorders:
            raise RuntimeError(
                f"terms read the module paths {self.module_paths}: run both networks inside Distiller.recording()"
            )
        if self.module_paths:
            student = {**student, **{path: self._recorders["student"][path] for path in self.module_paths}}
            teacher = {**teacher, **{path: self._recorders["teacher"][path] for path in self.module_paths}}
        self._recorders = {}
        return student, teacher

    def set_epoch(self, epoch: int) -> None:
        """Tell the terms which training epoch starts (learned masks stop learning at theirs)."""
        for term in self.terms.values():
            term.set_epoch(epoch)

    def forward(
        self, student: Mapping[str, Any], teacher: Mapping[str, Any], batch: Mapping[str, Any]
    ) -> dict[str, torch.Tensor]:
        """{"distill/<name>[/<part>]": weight * term} from the two detectors' named outputs and the batch."""
        student, teacher = self.inputs(student, teacher)
        losses = {}
        for name in self.terms:
            losses.update(self.term_losses(name, student, teacher, batch))
        return losses

    def term_losses(
        self, name: str, student: Mapping[str, Any], teacher: Mapping[str, Any], batch: Mapping[str, Any]
    ) -> dict[str, torch.Tensor]:
        """The weighted losses of one term from both networks' outputs (`inputs`)."""
        term, source = self.terms[name], self.sources[name]
        context = {"context": {n: teacher[n] for n in term.teacher_context}} if term.teacher_context else {}
        if term.reads == "levels":
            levels = {f: student[f] for f in source}, {f: teacher[f] for f in source}
            value = term.distill(*levels, batch, **context)
        else:
            value = term.distill(student[source], teacher[source], batch, **context)
        parts = value if isinstance(value, dict) else {"": value}
        return {"/".join(filter(None, ("distill", name, part))): self.weights[name] * loss for part, loss in parts.items()}
