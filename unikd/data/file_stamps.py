"""Cheap keys of a nuScenes database's content, for the caches built from it."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


def table_stamps(table_root: Path, tables: Iterable[str]) -> list[str]:
    """`name:size:mtime_ns` of each `table_root/<name>.json` that exists (a stat each, no reading)."""
    stamps = []
    for table in tables:
        try:
            stat = (table_root / f"{table}.json").stat()
        except FileNotFoundError:
            continue
        stamps.append(f"{table}:{stat.st_size}:{stat.st_mtime_ns}")
    return stamps
