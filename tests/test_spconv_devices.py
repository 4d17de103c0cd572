"""spconv on both devices: the algorithm follows the input's device, a CPU-only build is refused for GPUs,
bfloat16 autocast keeps the sparse convolutions in float32."""

from __future__ import annotations

import pytest
import torch
from spconv.core import ConvAlgo
from spconv.pytorch.conv import SparseConvolution
from test_sparse_encoder import SMALL, compare_with_dense, random_sites
from torch._subclasses.fake_tensor import FakeTensorMode

from unikd.exps.cli import accelerator_and_devices
from unikd.models.lidar import SparseEncoder
from unikd.ops import spconv_compat
from unikd.ops.spconv_compat import SparseConv3d, SubMConv3d, check_cuda_build, conv_algorithm

CUDA_BUILD_DEFAULT = ConvAlgo.MaskImplicitGemm  # what a CUDA build of spconv picks for these kernels


def as_cuda_build(module: torch.nn.Module) -> torch.nn.Module:
    """Give every sparse convolution the algorithm a CUDA build of spconv would have chosen."""
    for layer in module.modules():
        if isinstance(layer, SparseConvolution):
            layer.algo = layer.cuda_algo = CUDA_BUILD_DEFAULT
    return module


@pytest.mark.parametrize(
    "conv",
    [
        lambda: SubMConv3d(3, 4, 3, padding=1, bias=False, indice_key="subm"),
        lambda: SparseConv3d(3, 5, 3, stride=2, padding=(0, 1, 1), bias=False),
    ],
)
def test_cpu_tensors_use_native_whatever_the_build_default(conv) -> None:
    layer = as_cuda_build(conv())
    compare_with_dense(layer, in_channels=3, shape=(5, 9, 7))  # the dense conv3d twin, outputs and gradients
    assert layer.cuda_algo == CUDA_BUILD_DEFAULT  # kept for CUDA inputs


def test_encoder_with_cuda_build_defaults_runs_on_cpu() -> None:
    torch.manual_seed(0)
    encoder = SparseEncoder(in_channels=4, **SMALL).eval()
    shape = encoder.sparse_shape
    coords = random_sites(shape, batch_size=2, count=300, seed=3)
    features = torch.randn(300, 4)
    native = encoder(features, coords, 2)
    assert torch.equal(as_cuda_build(encoder)(features, coords, 2), native)


def test_algorithm_follows_the_device() -> None:
    with FakeTensorMode():
        on_cuda = torch.zeros(3, 4, device="cuda")
    assert conv_algorithm(on_cuda, CUDA_BUILD_DEFAULT) == CUDA_BUILD_DEFAULT
    assert conv_algorithm(torch.zeros(3, 4), CUDA_BUILD_DEFAULT) == ConvAlgo.Native


def test_bfloat16_autocast_runs_sparse_convolutions_in_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeTensorMode():
        on_cuda = torch.zeros(3, 4, device="cuda")
    autocast = {"enabled": True, "dtype": torch.bfloat16}
    monkeypatch.setattr(torch, "is_autocast_enabled", lambda device=None: autocast["enabled"] and device == "cuda")
    monkeypatch.setattr(torch, "get_autocast_dtype", lambda device: autocast["dtype"])
    assert spconv_compat.runs_in_float32(on_cuda)  # spconv would cast to float16 with no loss scaler
    autocast["dtype"] = torch.float16
    assert not spconv_compat.runs_in_float32(on_cuda)  # 16-mixed: spconv's float16 under the GradScaler
    autocast.update(enabled=False, dtype=torch.bfloat16)
    assert not spconv_compat.runs_in_float32(on_cuda)
    autocast["enabled"] = True
    assert not spconv_compat.runs_in_float32(torch.zeros(3, 4))  # CPU tensors: no CUDA autocast


@pytest.mark.parametrize(
    ("cuda", "build"), [("12.8", "cu126"), ("12.6", "cu126"), ("12.4", "cu124"), ("12.2", "cu121"), ("11.8", "cu118")]
)
def test_cpu_build_is_refused_naming_the_extra(cuda: str, build: str) -> None:
    with pytest.raises(ValueError, match=rf"CPU-only build.*CUDA {cuda}.*spconv-{build}.*\.\[{build}\]"):
        check_cuda_build(cpu_only_build=True, cuda_version=cuda)
    check_cuda_build(cpu_only_build=False, cuda_version=cuda)
    with pytest.raises(ValueError, match="spconv-cuXYZ"):
        check_cuda_build(cpu_only_build=True, cuda_version="11.3")


def test_gpus_with_the_cpu_build_of_spconv_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    if not spconv_compat.CPU_ONLY_BUILD:
        pytest.skip("the installed spconv is a CUDA build")
    with pytest.raises(ValueError, match=r"--gpus 2: .*CPU-only build.*\.\[cu124\]"):
        accelerator_and_devices(2, None)
    assert accelerator_and_devices(0, 3) == ("cpu", 3)
