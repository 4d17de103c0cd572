"""The checkpoint-format registry: each format of another framework is one `CheckpointFormat`, registered
by the module that converts it, and `unikd.interop` tries them in registration order.

A format says how to recognise a checkpoint (`recognise`), how to turn it into a unikd detector state dict
(`to_unikd`), which unikd preset its network is (`preset`) and which sensors it reads (`modalities`).
Adding a format is one `register_format(CheckpointFormat(...))` in its module, imported by
`unikd/interop/__init__.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from unikd.registry import Registry

State = dict[str, torch.Tensor]


class CheckpointFormatError(RuntimeError):
    """A checkpoint whose format is not recognised, or whose metadata does not say enough to convert it."""


@dataclass(frozen=True)
class Conversion:
    """What a format converts: the checkpoint, its tensors (`checkpoint_state`), the target detector's
    state dict (the shapes that decide sparse-kernel layouts), a box convention that overrides the
    checkpoint's metadata, and the target's model configuration (checked against recorded geometry)."""

    checkpoint: Mapping[str, Any]
    state: State
    expected: Mapping[str, torch.Tensor]
    box_convention: str | None = None
    config: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class CheckpointFormat:
    """One checkpoint format. `recognise(checkpoint, state)`; `to_unikd(conversion)` returns (unikd state,
    a description of the source) with unmapped source keys kept under their names, so that the strict
    check reports them; `preset(checkpoint, state)` and `modalities(checkpoint, state)` describe the network."""

    name: str
    looks_for: str  # how it is recognised, for the error that lists what was looked for
    recognise: Callable[[Mapping[str, Any], State], bool]
    to_unikd: Callable[[Conversion], tuple[State, str]]
    preset: Callable[[Mapping[str, Any], State], str | None]
    modalities: Callable[[Mapping[str, Any], State], tuple[str, ...]]


FORMATS: Registry[CheckpointFormat] = Registry("checkpoint format", "checkpoint format")


def register_format(checkpoint_format: CheckpointFormat) -> CheckpointFormat:
    """Add a format; formats are tried in the order they are registered."""
    return FORMATS.add(checkpoint_format.name, checkpoint_format)


def checkpoint_state(checkpoint: Mapping[str, Any]) -> State:
    """The tensors of a checkpoint's state dict: its `state_dict` (Lightning, mmdet3d), its `model_state`
    (OpenPCDet-style files such as UniDistill's teachers), or the checkpoint itself."""
    state = checkpoint
    for name in ("state_dict", "model_state"):
        if isinstance(checkpoint.get(name), Mapping):
            state = checkpoint[name]
            break
    return {key: value for key, value in state.items() if isinstance(value, torch.Tensor)}


def find_format(checkpoint: Mapping[str, Any]) -> tuple[CheckpointFormat, State]:
    """The first registered format that recognises `checkpoint`, with its tensors; a CheckpointFormatError
    that lists what each format looks for when none does."""
    state = checkpoint_state(checkpoint)
    for checkpoint_format in FORMATS.values():
        if checkpoint_format.recognise(checkpoint, state):
            return checkpoint_format, state
    sample = ", ".join(sorted(state)[:3]) or "no tensors"
    looked_for = "; ".join(f"{f.name}: {f.looks_for}" for f in FORMATS.values())
    raise CheckpointFormatError(f"unrecognised checkpoint format (keys such as {sample}); looked for {looked_for}")
