"""Each preset's camera branch reads the images its image augmentation makes."""

import pytest

from unikd.exps.base_exp import image_aug_for
from unikd.models.configs import _SIZES

SMALL_CAMERA = _SIZES["small"]["camera"]


@pytest.mark.parametrize("size", sorted(name for name, config in _SIZES.items() if config.get("camera") == SMALL_CAMERA))
def test_presets_with_the_small_camera_read_small_images(size):
    assert image_aug_for(size) == image_aug_for("small")
    assert image_aug_for(size).final_size == (128, 352)
