"""The nuScenes image augmentation decodes its JPEGs at a reduced DCT scale, with pixels close to a full decode."""

import io

import numpy as np
import pytest
from PIL import Image

from unikd.data.image_aug import ImageAugConfig, apply_image_aug, open_reduced


def textured_jpeg(width: int = 1600, height: int = 900) -> bytes:
    """A camera-sized JPEG with gradients, stripes, edges and noise (not symmetric in u and v)."""
    rng = np.random.default_rng(0)
    v, u = np.mgrid[:height, :width]
    image = np.stack([(u * 0.15 + 40 * np.sin(v / 37.0)) % 255, (v * 0.25) % 255, ((u + 2 * v) * 0.1) % 255], -1)
    image[300:520, 610:990] = [250, 30, 30]  # a sharp-edged block
    image = (image + rng.normal(0, 12, image.shape)).clip(0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.mark.parametrize("resize", [0.38, 0.48])  # the lowest training resize and the test resize
def test_nuscenes_images_decode_at_half_scale_close_to_full(resize: float) -> None:
    config = ImageAugConfig()
    assert config.reduced_decode and config.train_resize[0] <= resize <= config.test_resize
    data = textured_jpeg()
    height, width = config.final_size
    params = dict(resize=resize, crop=(21, int(900 * resize) - height, 21 + width, int(900 * resize)), flip=True,
                  rotate_deg=-3.2)
    full = np.asarray(apply_image_aug(Image.open(io.BytesIO(data)).convert("RGB"), **params), np.float64)
    with Image.open(io.BytesIO(data)) as file:
        reduced, original_size = open_reduced(file, resize)
    assert reduced.size == (800, 450) and original_size == (1600, 900)
    out = np.asarray(apply_image_aug(reduced, **params, original_size=original_size), np.float64)
    assert out.shape == full.shape == (height, width, 3)
    difference = np.abs(out - full)
    assert difference.mean() < 1.5 and np.percentile(difference, 99) <= 6  # of 255
