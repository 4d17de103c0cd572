"""Synthetic nuScenes-format dataset: a small world, ray-cast LiDAR and rendered cameras."""

from unikd.data.synthetic.generate import generate_synthetic_nuscenes

__all__ = ["generate_synthetic_nuscenes"]
