"""LiDAR branch: voxel feature encoder and sparse 3D encoder."""

from unikd.models.lidar.sparse_encoder import SparseBasicBlock, SparseEncoder
from unikd.models.lidar.voxel_encoder import MeanVFE

__all__ = ["MeanVFE", "SparseBasicBlock", "SparseEncoder"]
