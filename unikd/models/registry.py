"""Registries of a detector's interchangeable parts: a configuration names a part, a registry builds it.

A part is registered once, where it is defined (`@HEADS.register("center")` on its class or builder);
`BEVFusion` and the camera encoder look the configured name up here. Adding a head, a fuser, a depth
net or a camera backbone is one registered definition in a module that the detector imports.

What each registry holds, and what `build` passes it:

- `HEADS` (config `head.type`, "center" when absent): a detection head class,
  `(in_channels, grid=BEVGrid, **the other keys of head)`; it has `forward`, `loss` and `decode`.
- `FUSERS` (config `fuser.type`, "conv" when `fuser` is absent): a builder
  `(in_channels: list[int], config: dict, grid_size: (H, W), **the other keys of fuser) -> nn.Module`.
- `DEPTH_NETS` (config `camera.depth_net`): a depth net class, `(in_channels, num_bins, context_channels)`,
  with class attributes `needs_points` (its forward also reads the LiDAR depth image) and
  `feature_stride` (the image feature stride it requires, None for any).
- `CAMERA_BACKBONES` (config `camera.backbone`): a builder `(out_indices, **backbone settings) -> nn.Module`,
  the settings being the camera keys `CameraBEVEncoder` does not take itself; the module has
  `out_channels` and `out_strides` per output.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Part = Callable[..., Any]  # a class or a builder function


class Registry:
    """Parts of one kind by name. `key` is the configuration key that names them (for errors)."""

    def __init__(self, kind: str, key: str) -> None:
        self.kind = kind
        self.key = key
        self._parts: dict[str, Part] = {}

    def register(self, name: str) -> Callable[[Part], Part]:
        """Decorator: make a class or builder the part `name`."""

        def register(part: Part) -> Part:
            if name in self._parts:
                raise ValueError(f"{self.kind} {name!r} is already registered ({self._parts[name].__name__})")
            self._parts[name] = part
            return part

        return register

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._parts))

    def __contains__(self, name: object) -> bool:
        return name in self._parts

    def get(self, name: str) -> Part:
        """The part registered as `name`; an unknown name is an error that lists the known ones."""
        if name not in self._parts:
            raise ValueError(f"{self.key} must be one of {self.names}, got {name!r}")
        return self._parts[name]

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """The part `name` built from these arguments."""
        return self.get(name)(*args, **kwargs)


HEADS = Registry("head", "config head.type")
FUSERS = Registry("fuser", "config 'fuser' type")
DEPTH_NETS = Registry("depth net", "camera depth_net")
CAMERA_BACKBONES = Registry("camera backbone", "camera backbone")
