"""Camera image augmentation (resize, crop, flip, rotate) and its `img_aug` (ida) matrix.

Pixel coordinates follow the `cam2img` convention: integer values at pixel centres, u to the
right, v down. The steps, in order:

1. resize by `resize` (both axes): a pixel centre u maps to `resize * (u + 0.5) - 0.5`;
2. crop the box `(x0, y0, x1, y1)` of the resized image (outside the image is black);
3. mirror left-right within the crop when `flip`;
4. rotate by `rotate_deg` counter-clockwise (as displayed) about the crop's centre.

`ImageAugConfig` holds the ranges, `sample_image_aug` draws one image's steps from them,
`ida_matrix` returns the 4x4 map of original pixels `(u, v, 0, 1)` to augmented pixels and
`apply_image_aug` produces the matching image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class ImageAugConfig:
    """Resize, crop, flip and rotation of camera images (BEVFusion's nuScenes defaults)."""

    final_size: tuple[int, int] = (256, 704)  # (H, W)
    train_resize: tuple[float, float] = (0.38, 0.55)
    test_resize: float = 0.48
    rotate_deg: tuple[float, float] = (-5.4, 5.4)
    flip_prob: float = 0.5
    # decode JPEGs at a reduced DCT scale (`open_reduced`): same geometry, slightly different pixels
    # (mean under 1 of 255 at the nuScenes sizes), several times faster at small sizes; at the nuScenes sizes
    # the resizes under 0.5 decode at 1/2 (BENCHMARKS.md, image_decode)
    reduced_decode: bool = True


def sample_image_aug(
    config: ImageAugConfig, width: int, height: int, rng: np.random.Generator, training: bool
) -> dict:
    """One image's steps (`resize`, `crop`, `flip`, `rotate_deg`): drawn in training, the fixed test ones else.

    The crop keeps the bottom of the resized image (the road); in training its x offset is drawn, else centred.
    """
    final_h, final_w = config.final_size
    if training:
        resize = rng.uniform(*config.train_resize)
    else:
        resize = config.test_resize
    new_w, new_h = int(width * resize), int(height * resize)
    crop_y = max(new_h - final_h, 0)  # keep the bottom of the image (the road)
    crop_x = int(rng.uniform(0, max(new_w - final_w, 0))) if training else max(new_w - final_w, 0) // 2
    flip = training and rng.random() < config.flip_prob
    rotate = rng.uniform(*config.rotate_deg) if training else 0.0
    return {
        "resize": resize,
        "crop": (crop_x, crop_y, crop_x + final_w, crop_y + final_h),
        "flip": flip,
        "rotate_deg": rotate,
    }


def _affine(linear: np.ndarray, offset: np.ndarray) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:2, :2] = linear
    matrix[:2, 3] = offset
    return matrix


def ida_matrix(resize: float, crop: tuple[int, int, int, int], flip: bool, rotate_deg: float) -> np.ndarray:
    """4x4 float64 map of an original pixel (u, v, 0, 1) to its augmented pixel."""
    x0, y0, x1, y1 = crop
    width, height = x1 - x0, y1 - y0
    scale = _affine(resize * np.eye(2), np.full(2, 0.5 * resize - 0.5))
    shift = _affine(np.eye(2), -np.array([x0, y0], dtype=np.float64))
    mirror = _affine(np.diag([-1.0, 1.0]), np.array([width - 1.0, 0.0])) if flip else np.eye(4)
    angle = math.radians(rotate_deg)
    cos, sin = math.cos(angle), math.sin(angle)
    # counter-clockwise on screen with v pointing down: (1, 0) -> (cos, -sin)
    rotation = np.array([[cos, sin], [-sin, cos]])
    centre = np.array([(width - 1.0) / 2.0, (height - 1.0) / 2.0])
    rotate = _affine(rotation, centre - rotation @ centre)
    return rotate @ mirror @ shift @ scale


def open_reduced(file: Image.Image, resize: float) -> tuple[Image.Image, tuple[int, int]]:
    """An opened image decoded as RGB, a JPEG at the coarsest of its DCT scales (1/2, 1/4, 1/8) that keeps it at
    least `resize` times its size (much faster than a full decode and resize), and its original size (W, H).

    A JPEG decoded at 1/k averages k x k blocks: reduced pixel j covers original pixels [j k, (j + 1) k), so
    `apply_image_aug(..., original_size=...)` of it has `ida_matrix`'s geometry; its pixels differ from a full
    decode's by the two filters (box-like against bilinear)."""
    original = file.size
    file.draft("RGB", (math.ceil(original[0] * resize), math.ceil(original[1] * resize)))
    return file.convert("RGB"), original


def apply_image_aug(
    img: Image.Image,
    resize: float,
    crop: tuple[int, int, int, int],
    flip: bool,
    rotate_deg: float,
    resample: Image.Resampling = Image.Resampling.BILINEAR,
    original_size: tuple[int, int] | None = None,
) -> Image.Image:
    """The augmented image, of size (x1 - x0, y1 - y0), matching `ida_matrix` of the same parameters.
    `original_size`: (W, H) of the original when `img` is a reduced decode of it (`open_reduced`)."""
    width, height = original_size or img.size
    factor = round(width / img.width)  # 1/k of a reduced decode
    new_w, new_h = int(width * resize), int(height * resize)
    # the source box makes the scale exactly `resize` on both axes despite the integer size
    box = (0.0, 0.0, min(new_w / resize, width) / factor, min(new_h / resize, height) / factor)
    img = img.resize((new_w, new_h), resample=resample, box=box)
    img = img.crop(tuple(int(c) for c in crop))
    if flip:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if rotate_deg != 0.0:
        img = img.rotate(rotate_deg, resample=resample)
    return img
