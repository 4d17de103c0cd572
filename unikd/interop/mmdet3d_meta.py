"""What an mmdet3d checkpoint's metadata says of its box convention."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from unikd.interop.formats import CheckpointFormatError


def mmdet3d_box_convention(checkpoint: Mapping[str, Any]) -> tuple[str, str]:
    """("0.x" or "1.x", the version it was read from) of an mmdet3d checkpoint's metadata."""
    meta = checkpoint.get("meta") or {}
    if meta.get("box_convention") in ("0.x", "1.x"):  # written by tools/export_checkpoint.py
        return meta["box_convention"], meta.get("exported_by", "exported")
    version = meta.get("mmdet3d_version")
    if isinstance(version, str) and re.match(r"^\d+\.", version):
        return ("0.x" if int(version.split(".")[0]) == 0 else "1.x"), f"mmdet3d {version}"
    if "mmengine_version" in meta:
        return "1.x", f"mmengine {meta['mmengine_version']}"
    raise CheckpointFormatError(
        "the mmdet3d checkpoint records no mmdet3d_version or mmengine_version in its 'meta', so its box "
        "convention (0.x or 1.x) is unknown: convert it once with "
        "`python tools/convert_checkpoint.py SRC --out DST --box-convention 0.x|1.x`"
    )
