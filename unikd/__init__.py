"""unikd: cross-modality knowledge distillation for BEV 3D object detectors."""

__version__ = "0.1.0"
