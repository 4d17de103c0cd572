"""Registries of a detector's interchangeable parts: a configuration names a part, a registry builds it.

A part is registered once, where it is defined (`@HEADS.register("center")` on its class or builder);
`BEVFusion` and the camera encoder look the configured name up here (`unikd.registry.Registry`). Adding a head, a fuser, a depth
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

from unikd.registry import Registry

Part = Callable[..., Any]  # a class or a builder function

HEADS: Registry[Part] = Registry("head", "config head.type")
FUSERS: Registry[Part] = Registry("fuser", "config 'fuser' type")
DEPTH_NETS: Registry[Part] = Registry("depth net", "camera depth_net")
CAMERA_BACKBONES: Registry[Part] = Registry("camera backbone", "camera backbone")
