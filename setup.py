from setuptools import find_packages, setup

SPCONV_CUDA_BUILDS = ("cu113", "cu114", "cu116", "cu117", "cu118", "cu120", "cu121", "cu124", "cu126")

setup(
    name="unikd",
    version="0.1.0",
    description="Cross-modality knowledge distillation for BEV 3D object detectors",
    packages=find_packages(include=["unikd", "unikd.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.1",
        "pytorch-lightning>=2.1,<3",
        "torchmetrics>=1.2",
        "nuscenes-devkit>=1.1.10",
        "numpy<2",
        "pillow",
        "tqdm",
        "tensorboard",
    ],
    extras_require={
        "cpu": ["spconv>=2.3"],
        **{build: [f"spconv-{build}>=2.3"] for build in SPCONV_CUDA_BUILDS},
        "dev": ["pytest>=7", "ruff"],
    },
)
