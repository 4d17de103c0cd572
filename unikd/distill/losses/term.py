"""What a distillation term kind is, and the registry the distiller looks kinds up in.

A kind is one `DistillTerm` subclass registered under its name (`@register_term("feature")`). It
declares what it reads (`reads`), builds itself (adapters, projectors, banks) from a `TermSetup` and
the spec's options (`build`), and computes its loss from what it reads in both networks and the
batch (`distill`); `forward` is the loss on plain tensors. What it reads:

- "dense": one dense BEV output [B, C, H, W], a named output or a module path;
- "head":  the head's outputs (`head`: per task, a dict of maps);
- "levels": several named outputs (a list in the spec), given as {name: output}.

`distill` returns a loss, or {part: loss} where the part "" is the term itself. A term that also
reads named outputs of the teacher alone lists them in `teacher_context` (e.g. learned masks read the
teacher's `fusion_queries`); the distiller then passes them to `distill` as `context` {name: output}.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from unikd.ops.bev_grid import BEVGrid
from unikd.registry import Registry

READS = ("dense", "head", "levels")


@dataclass(frozen=True)
class TermSetup:
    """What a term is built from.

    `feature` is what the spec names (a name or module path; a tuple of names for "levels");
    `student_shape` / `teacher_shape` are the shapes of what the term reads (`BEVFusion.output_shapes`):
    (C, H, W) for "dense", (H, W) for "head", {name: shape} for "levels". `grid` is the metric BEV
    region both networks cover (the teacher's grid); the networks themselves are there for terms that
    need more of them (voxel grids, the teacher's head), never to be held as submodules.
    """

    feature: str | tuple[str, ...]
    student_shape: Any
    teacher_shape: Any
    grid: BEVGrid
    student: nn.Module
    teacher: nn.Module
    num_train_samples: int | None = None


class DistillTerm(nn.Module):
    """A distillation term kind (module doc). Subclasses set `reads` and define `build` and `distill`."""

    kind: ClassVar[str]
    reads: ClassVar[str] = "dense"
    needs_train_samples: ClassVar[bool] = False  # keeps per-sample state: needs TermSetup.num_train_samples
    teacher_context: tuple[str, ...] = ()  # teacher outputs `distill` also reads, given as `context`

    @classmethod
    def build(cls, setup: TermSetup, **options: Any) -> DistillTerm:
        raise NotImplementedError

    def distill(self, student: Any, teacher: Any, batch: Mapping[str, Any]) -> torch.Tensor | dict[str, torch.Tensor]:
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        """Called as each training epoch starts; most terms do not change with it."""


TERM_KINDS: Registry[type[DistillTerm]] = Registry("term kind", "kind")


def register_term(kind: str) -> Callable[[type[DistillTerm]], type[DistillTerm]]:
    """Class decorator: make a DistillTerm subclass the term kind `kind`."""

    def register(cls: type[DistillTerm]) -> type[DistillTerm]:
        if not issubclass(cls, DistillTerm) or cls.reads not in READS:
            raise TypeError(f"{cls.__name__} must be a DistillTerm whose `reads` is one of {READS}")
        TERM_KINDS.add(kind, cls)
        cls.kind = kind
        return cls

    return register
