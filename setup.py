from setuptools import find_packages, setup

# spconv's CUDA builds with a 2.3.8 release, the version tested (wheels for Python 3.11 and 3.12; cu124 and
# cu126 need glibc >= 2.28, cu121 runs on older systems). cu120 ends at 2.3.6, with no Python 3.12 wheel.
# unikd.ops.spconv_compat.SPCONV_CUDA_BUILDS names the same builds in its error for a CPU-only spconv.
SPCONV_CUDA_BUILDS = ("cu114", "cu118", "cu121", "cu124", "cu126")

setup(
    name="unikd",
    version="0.1.0",
    description="Cross-modality knowledge distillation for BEV 3D object detectors",
    packages=find_packages(include=["unikd", "unikd.*"]),
    python_requires=">=3.10",
    # Upper bounds on every major version; constraints.txt pins the set CI tests.
    install_requires=[
        "torch>=2.1,<3",
        "pytorch-lightning>=2.1,<3",
        "torchmetrics>=1.2,<2",
        "nuscenes-devkit>=1.1.10,<2",
        "numpy>=1.22,<2",
        "scipy>=1.7,<2",
        "pillow>=9,<14",
        "matplotlib>=3.5,<4",
        "tqdm>=4.60,<5",
        "tensorboard>=2.10,<3",
    ],
    extras_require={
        "cpu": ["spconv>=2.3.8,<3"],
        **{build: [f"spconv-{build}>=2.3.8,<3"] for build in SPCONV_CUDA_BUILDS},
        "dev": ["pytest>=7,<10", "ruff>=0.5,<0.18"],
    },
)
