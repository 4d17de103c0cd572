"""The one place that imports spconv: its convolutions on both devices, two patches of its CPU path, its
build check and its TF32 switch.

Convolutions (`SubMConv3d`, `SparseConv3d`) pick spconv's algorithm by the input's device at every call:
Native on CPU tensors, the build's default (implicit GEMM on CUDA builds) on CUDA tensors. spconv's CUDA
wheels default to `ConvAlgo.MaskImplicitGemm`, which asserts "implicit gemm only support cuda" on CPU
tensors; both algorithms keep the weight in one layout (KRSC: [out, kD, kH, kW, in]), so a layer moves
between devices as it is. Under autocast spconv casts its inputs to float16 whatever the autocast dtype
(`custom_fwd(cast_inputs=torch.float16)`): under bfloat16 autocast, which has no loss scaler to keep
float16 gradients from underflowing, the convolutions run in float32 instead (TF32 when `allow_tf32`).

1. Backward without CUDA. spconv's CPU convolution backward (`spconv.pytorch.ops.indice_conv_backward`)
   asks for the current CUDA stream (`ops.get_current_stream` -> `torch.cuda.current_stream()`)
   before it checks whether the tensors are on the CPU; on a torch without CUDA that raises
   "Torch not compiled with CUDA enabled". The CPU branch never uses the stream, so when CUDA is
   unavailable `ops.get_current_stream` is replaced by a function returning the null stream (0),
   which is what spconv's other CPU paths pass.
2. A data race in the CPU scatter-add. A CPU-only spconv build convolves CPU tensors in Python by
   gather -> matmul -> `SpconvOps.scatter_add_cpu`, and that C++ kernel shares its row pointers
   between threads, so with more than one thread some output rows receive another row's values
   (forward and backward results change from run to run). For such builds `ops.SpconvOps` is
   replaced by a subclass whose `scatter_add_cpu` is a torch `index_add_` on the same memory.

`apply_cpu_shim()` runs on import and is idempotent. `check_cuda_build()` refuses a CPU-only build of
spconv for a GPU run, naming the extra that installs the CUDA build.
"""

from __future__ import annotations

import spconv.pytorch as spconv
import torch
from spconv import constants as _spconv_constants
from spconv.core import ConvAlgo
from spconv.cppconstants import CPU_ONLY_BUILD
from spconv.pytorch import ops as _spconv_ops

__all__ = [
    "SparseConv3d",
    "SubMConv3d",
    "allow_tf32",
    "apply_cpu_shim",
    "check_cuda_build",
    "conv_algorithm",
    "runs_in_float32",
    "spconv",
]

if not _spconv_constants.ALL_WEIGHT_IS_KRSC:
    raise ImportError(
        "the installed spconv keeps Native-algorithm weights in another layout than implicit GEMM's; unikd needs "
        "spconv >= 2.2 (one KRSC layout for every algorithm)"
    )

# CUDA builds of spconv on PyPI with a 2.3.8 release (wheels for Python 3.11 and 3.12), newest first: the
# extra (setup.py) for a torch built against CUDA X.Y is the newest build not newer than X.Y.
SPCONV_CUDA_BUILDS = ("cu126", "cu124", "cu121", "cu118", "cu114")

_SpconvOps = _spconv_ops.SpconvOps


def _null_stream() -> int:
    return 0


class _SpconvOpsSerialScatter(_SpconvOps):
    """spconv's ops with a race-free CPU scatter-add."""

    @staticmethod
    def scatter_add_cpu(out, inp, inds) -> None:  # tensorview tensors: out [M, C], inp [>= n, C], inds [n]
        index = torch.from_numpy(inds.numpy_view()).long()
        source = torch.from_numpy(inp.numpy_view())[: index.shape[0]]
        torch.from_numpy(out.numpy_view()).index_add_(0, index, source)


def cuda_build_for(cuda_version: str | None) -> str | None:
    """The spconv CUDA build (e.g. "cu124") for a torch built against CUDA `cuda_version` ("12.4"), or None
    when no build is old enough."""
    if not cuda_version:
        return None
    major, minor = (int(part) for part in cuda_version.split(".")[:2])
    for build in SPCONV_CUDA_BUILDS:
        build_major, build_minor = int(build[2:-1]), int(build[-1])
        if (build_major, build_minor) <= (major, minor):
            return build
    return None


def check_cuda_build(cpu_only_build: bool = CPU_ONLY_BUILD, cuda_version: str | None = None) -> None:
    """Raise ValueError if the installed spconv cannot run on CUDA tensors (its CPU-only build), naming the
    package and the setup.py extra of the CUDA build that matches torch's CUDA (`torch.version.cuda`)."""
    if not cpu_only_build:
        return
    cuda_version = cuda_version or torch.version.cuda
    build = cuda_build_for(cuda_version)
    install = (
        f"its CUDA build spconv-{build}: in the unikd checkout, pip uninstall -y spconv cumm && "
        f"pip install -e '.[{build}]'"
        if build
        else f"a CUDA build of spconv (spconv-cuXYZ, one of {SPCONV_CUDA_BUILDS}) that runs on CUDA {cuda_version}"
    )
    raise ValueError(
        f"the installed spconv is its CPU-only build (package 'spconv'), which cannot convolve CUDA tensors; "
        f"torch {torch.__version__} uses CUDA {cuda_version}: install {install}"
    )


def allow_tf32() -> None:
    """Let spconv's float32 GEMMs use TF32 tensor cores (read at every call: spconv.constants)."""
    _spconv_constants.SPCONV_ALLOW_TF32 = True


def conv_algorithm(features: torch.Tensor, cuda_algorithm: ConvAlgo) -> ConvAlgo:
    """spconv's algorithm for features on their device: Native on the CPU, `cuda_algorithm` on CUDA."""
    return cuda_algorithm if features.is_cuda else ConvAlgo.Native


def runs_in_float32(features: torch.Tensor) -> bool:
    """Whether a sparse convolution of `features` runs in float32 with autocast off: under CUDA autocast to
    any dtype but float16 (spconv would cast to float16 with no loss scaler behind it)."""
    return (
        features.is_cuda
        and torch.is_autocast_enabled("cuda")
        and torch.get_autocast_dtype("cuda") != torch.float16
    )


class _DeviceAwareConv:
    """Mixin for spconv's convolutions: the algorithm and the autocast dtype chosen per call (module doc)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.cuda_algo = self.algo  # spconv's default for this build and kernel

    def forward(self, input: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
        self.algo = conv_algorithm(input.features, self.cuda_algo)
        if runs_in_float32(input.features):
            with torch.autocast("cuda", enabled=False):
                return super().forward(input.replace_feature(input.features.float()))
        return super().forward(input)


class SubMConv3d(_DeviceAwareConv, spconv.SubMConv3d):
    """spconv's submanifold 3D convolution on either device (module doc)."""


class SparseConv3d(_DeviceAwareConv, spconv.SparseConv3d):
    """spconv's regular sparse 3D convolution on either device (module doc)."""


def apply_cpu_shim() -> None:
    """Patch spconv's CPU path where needed: the stream lookup without CUDA, the scatter-add on CPU-only builds."""
    if not torch.cuda.is_available():
        _spconv_ops.get_current_stream = _null_stream
    if CPU_ONLY_BUILD:
        _spconv_ops.SpconvOps = _SpconvOpsSerialScatter


apply_cpu_shim()
