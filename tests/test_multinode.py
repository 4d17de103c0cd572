"""Beyond one machine: two "nodes" of one CPU process each (gloo over 127.0.0.1) train, share one run
folder and evaluate every sample once; -p on two processes gathers every sample's record."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from unikd.evaluation.ground_truth import prepare_ground_truth

LIDAR_EXP = Path(__file__).resolve().parents[1] / "exps/nuscenes/BEVFusion/BEVFusion_nuscenes_centerhead_lidar_exp.py"
COMMON = ["--no_progress_bar", "-b", "1", "--exp_options", "model_size=small", "num_workers=0", "num_sweeps=1"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("UNIKD_RUN_DIR", "NODE_RANK", "LOCAL_RANK", "RANK")}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


@pytest.mark.slow
def test_two_nodes_train_share_one_run_folder_and_predict_every_sample(synthetic_root: Path, tmp_path: Path) -> None:
    port = str(free_port())
    command = [sys.executable, str(LIDAR_EXP), "--data_root", str(synthetic_root), "--output_root", str(tmp_path),
               "--num_nodes", "2", "--devices", "1", "--run_name", "two-nodes", "--max_epochs", "1",
               "--limit_train_batches", "2", *COMMON]
    nodes = [
        subprocess.Popen(command, cwd=tmp_path, env=clean_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
                                                              NODE_RANK=str(rank)),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for rank in range(2)
    ]
    outputs = [node.communicate(timeout=600)[0] for node in nodes]
    for rank, (node, output) in enumerate(zip(nodes, outputs, strict=True)):
        assert node.returncode == 0, f"node {rank}:\n{output[-3000:]}"
        assert f"GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/2" in output  # one world of two processes

    exp_root = tmp_path / LIDAR_EXP.stem
    assert sorted(p.name for p in exp_root.iterdir()) == ["latest", "two-nodes"]
    run = exp_root / "two-nodes"
    checkpoint = torch.load(run / "checkpoints/last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 2  # two steps, each over both nodes' batches
    # the metric refuses a whole-split evaluation that misses a sample: both nodes' predictions were gathered
    summary = json.loads((run / "eval/metrics_summary_epoch0.json").read_text())
    assert summary["meta"]["split"] == "mini_val"

    predict = [sys.executable, str(LIDAR_EXP), "--data_root", str(synthetic_root), "--output_root", str(tmp_path),
               "-p", "--ckpt_path", str(run / "checkpoints/last.ckpt"), "--devices", "2", *COMMON]
    result = subprocess.run(predict, cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    submission = json.loads((exp_root / "latest" / "submission.json").read_text())
    expected = set(prepare_ground_truth(("v1.0-mini", str(synthetic_root)), "mini_val").sample_tokens)
    assert set(submission["results"]) == expected
