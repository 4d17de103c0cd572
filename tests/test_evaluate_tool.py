"""tools/evaluate.py on the synthetic nuScenes-format dataset: its figures are DetectionEval's, bad input fails early."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from nuscenes import NuScenes
from nuscenes.eval.common.loaders import load_gt
from nuscenes.eval.detection.data_classes import DetectionBox

from unikd.evaluation import flatten_summary
from unikd.evaluation.devkit_eval import evaluate_with_devkit

VERSION, EVAL_SET = "v1.0-mini", "mini_val"
TOOL = Path(__file__).parents[1] / "tools" / "evaluate.py"


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("evaluate_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def nusc(synthetic_root) -> NuScenes:
    return NuScenes(version=VERSION, dataroot=str(synthetic_root), verbose=False)


@pytest.fixture(scope="module")
def submission(nusc, tmp_path_factory) -> dict:
    """The devkit's ground truth of mini_val, jittered, with random scores and a few false positives."""
    rng = np.random.default_rng(0)
    results = {}
    for token, boxes in load_gt(nusc, EVAL_SET, DetectionBox).boxes.items():
        results[token] = [
            {
                "sample_token": token,
                "translation": (np.array(box.translation) + rng.normal(0, 0.6, 3)).tolist(),
                "size": (np.array(box.size) * np.exp(rng.normal(0, 0.1, 3))).tolist(),
                "rotation": list(box.rotation),
                "velocity": np.nan_to_num(np.array(box.velocity) + rng.normal(0, 0.5, 2)).tolist(),
                "detection_name": name,
                "detection_score": float(rng.uniform(0.05, 1.0)),
                "attribute_name": box.attribute_name if name == box.detection_name else "",
            }
            # One box in five is given another class (a false positive, and a missed box).
            for box in boxes
            for name in [box.detection_name if rng.random() < 0.8 else "barrier"]
        ]
    return {"meta": {"use_camera": False, "use_lidar": True}, "results": results}


def write(path: Path, content) -> Path:
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def args(path: Path, root: Path, *extra: str) -> list[str]:
    return [str(path), "--data_root", str(root), "--version", VERSION, "--split", EVAL_SET, *extra]


def assert_same_figures(ours: dict, theirs: dict) -> None:
    ours, theirs = flatten_summary(ours), flatten_summary(theirs)
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        assert (math.isnan(ours[key]) and math.isnan(value)) or abs(ours[key] - value) <= 1e-12, key


def test_tool_scores_like_detection_eval(tool, nusc, submission, synthetic_root, tmp_path, capsys):
    path = write(tmp_path / "colleague.json", submission)
    theirs = evaluate_with_devkit(nusc, path, EVAL_SET, tmp_path / "devkit")
    capsys.readouterr()
    tool.main(args(path, synthetic_root, "--out", str(tmp_path / "ours.json")))
    printed = capsys.readouterr().out.splitlines()
    ours = json.loads((tmp_path / "ours.json").read_text())
    assert list(ours) == list(theirs) and ours["meta"] == theirs["meta"] == submission["meta"]
    assert_same_figures(ours, theirs)
    assert printed[0] == f"mAP: {theirs['mean_ap']:.4f}" and printed[6] == f"NDS: {theirs['nd_score']:.4f}"
    assert printed[-1] == f"metrics summary written to {tmp_path / 'ours.json'}"
    # As a command, with the default output next to the submission.
    run = subprocess.run(
        [sys.executable, str(TOOL), *args(path, synthetic_root)], capture_output=True, text=True, check=True
    )
    assert f"NDS: {theirs['nd_score']:.4f}" in run.stdout
    assert_same_figures(json.loads((tmp_path / "colleague_metrics_summary.json").read_text()), theirs)


def test_tool_devkit_backend(tool, submission, synthetic_root, tmp_path):
    path = write(tmp_path / "submission.json", submission)
    tool.main(args(path, synthetic_root, "--backend", "devkit"))
    tool.main(args(path, synthetic_root, "--out", str(tmp_path / "ours.json")))
    devkit = json.loads((tmp_path / "submission_metrics_summary.json").read_text())
    assert_same_figures(json.loads((tmp_path / "ours.json").read_text()), devkit)


def test_tool_refuses_bad_input(tool, submission, synthetic_root, tmp_path):
    results = submission["results"]
    token, boxes = next(iter(results.items()))

    def refused(content, match: str, root: Path = synthetic_root) -> None:
        path = write(tmp_path / "bad.json", content)
        with pytest.raises(SystemExit, match=match):
            tool.main(args(path, root))

    def changed(token_boxes: dict) -> dict:
        return {"meta": {}, "results": {**results, **token_boxes}}

    with pytest.raises(SystemExit, match=r"submission .*missing.json does not exist"):
        tool.main(args(tmp_path / "missing.json", synthetic_root))
    refused("{not json", r"bad.json is not JSON")
    refused({"meta": {}}, r"bad.json has no `results` object")
    refused({"results": results}, r"bad.json has no `meta` object")
    refused(
        changed({"not-a-sample": []}),
        r"1 of its \d+ samples are not in the mini_val split of v1.0-mini, e.g. not-a-sample",
    )
    refused(
        {"meta": {}, "results": dict(list(results.items())[1:])}, rf"no results for 1 of .* e\.g\. {token}"
    )
    refused(
        changed({token: [{**boxes[0], "detection_score": -2.5}]}),
        rf"bad.json: sample {token}: box 0 has score -2.5 .* in \[0, 1\], not logits",
    )
    refused(
        changed({token: [{**boxes[0], "detection_name": "cat"}]}), "box 0 has unknown detection_name 'cat'"
    )
    no_score = {key: value for key, value in boxes[0].items() if key != "detection_score"}
    refused(changed({token: [boxes[0], no_score]}), rf"sample {token}: box 1 lacks detection_score")
    refused(changed({token: [{**boxes[0], "size": [1.0, 2.0]}]}), "every box's size must be 3 numbers")
    refused(changed({token: [{**boxes[0], "sample_token": "other"}]}), "box 0 has sample_token 'other'")
    refused(submission, "nuScenes data root .* does not exist", root=tmp_path / "nowhere")
