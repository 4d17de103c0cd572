"""The checks of an experiment's settings that every experiment shares, run when it is built: each error names the
setting and what was expected, before any data is read or any training time is spent."""

from __future__ import annotations

import math
from typing import Any

from unikd.data.infos import SPLITS_BY_VERSION


def check_experiment_settings(exp: Any) -> None:
    """Errors for settings of `exp` (a BaseExp) that would otherwise fail late."""
    if exp.version not in SPLITS_BY_VERSION:
        raise ValueError(f"unknown nuScenes version {exp.version!r}; expected one of {sorted(SPLITS_BY_VERSION)}")
    if exp.eval_backend not in exp.eval_backends:
        raise ValueError(f"eval_backend must be one of {exp.eval_backends}, got {exp.eval_backend!r}")
    if exp.batch_size_per_device < 1:
        raise ValueError(f"batch size per device must be at least 1, got {exp.batch_size_per_device}")
    if exp.num_workers is not None and exp.num_workers < 0:
        raise ValueError(f"num_workers must be at least 0 (0 loads in the training process), got {exp.num_workers}")
    if not (math.isfinite(exp.lr) and exp.lr > 0):
        raise ValueError(
            f"lr must be a positive finite learning rate, got {exp.lr} (a run at lr <= 0 would train nothing; "
            "to evaluate a checkpoint use -e)"
        )
    if exp.infos_box_convention is not None and not exp.infos:
        raise ValueError("--infos_box_convention is for mmdet3d info files: pass them with --infos")
    if exp.num_sweeps < 1:
        raise ValueError(f"num_sweeps must be at least 1 (the key frame), got {exp.num_sweeps}")
    if exp.camera_init and "camera" not in exp.modalities:
        raise ValueError(f"camera_init {exp.camera_init} initialises a camera branch; modalities are {exp.modalities}")
    if exp.drop_modality_at_eval and (len(exp.modalities) < 2 or exp.drop_modality_at_eval not in exp.modalities):
        raise ValueError(
            f"drop_modality_at_eval removes one modality of a fusion experiment ({exp.modalities}), "
            f"got {exp.drop_modality_at_eval!r}"
        )
