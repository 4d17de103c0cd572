"""Shared fixtures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from unikd.data.synthetic import generate_synthetic_nuscenes

# The synthetic mini dataset every data test reads: all 10 mini scenes (8 mini_train, 2 mini_val),
# smaller than the default build so that it takes seconds.
SYNTHETIC_MINI = {
    "version": "v1.0-mini",
    "seed": 0,
    "keyframes_per_scene": 8,
    "sweeps_per_keyframe": 2,
    "objects_per_scene": 40,
    "workers": 2,
}


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of a synthetic v1.0-mini nuScenes dataset, built once per test session."""
    return generate_synthetic_nuscenes(tmp_path_factory.mktemp("synthetic") / "nuscenes", **SYNTHETIC_MINI)


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keep the prepared ground truth of test datasets out of the user's cache folder."""
    mp = pytest.MonkeyPatch()
    mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()
