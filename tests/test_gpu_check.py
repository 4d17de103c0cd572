"""tools/gpu_check.sh without a GPU: it stops at once, non-zero, naming the missing CUDA device."""

import subprocess
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "tools/gpu_check.sh"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without CUDA")
def test_gpu_check_fails_clearly_without_cuda(tmp_path: Path) -> None:
    result = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "sees no CUDA device" in result.stderr and "README: On GPUs" in result.stderr
    assert not (tmp_path / "out" / "summary.txt").exists()  # nothing ran
