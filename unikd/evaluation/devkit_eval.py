"""The official path: the nuScenes devkit's `DetectionEval` on a submission JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nuscenes import NuScenes
from nuscenes.eval.common.config import config_factory
from nuscenes.eval.detection.data_classes import DetectionConfig
from nuscenes.eval.detection.evaluate import DetectionEval

from unikd.data.infos import load_nuscenes


def evaluate_with_devkit(
    source: NuScenes | tuple[str, str],
    submission_path: str | Path,
    eval_set: str,
    output_dir: str | Path,
    config: DetectionConfig | str = "detection_cvpr_2019",
    verbose: bool = False,
) -> dict[str, Any]:
    """Run `DetectionEval` (no plots); prints its summary and per-class table and returns its metrics summary.

    The devkit also writes metrics_summary.json and metrics_details.json into output_dir.
    """
    if not isinstance(source, NuScenes):
        version, dataroot = source
        source = load_nuscenes(dataroot, version)
    evaluation = DetectionEval(
        source,
        config=config_factory(config) if isinstance(config, str) else config,
        result_path=str(submission_path),
        eval_set=eval_set,
        output_dir=str(output_dir),
        verbose=verbose,
    )
    return evaluation.main(plot_examples=0, render_curves=False)
