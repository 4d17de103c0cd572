"""The presets: each preset's camera branch reads the images its image augmentation makes, the preset table is
the one frozen in tests/fixtures/presets/preset_table.json (written from the table before the presets became
named constants; `python tests/test_presets.py` rewrites it after an intended change), and `derive` merges
sections, replaces and removes them as it says."""

import json
from pathlib import Path

import pytest
import torch

from unikd.data.collate import collate_batch
from unikd.data.image_aug import ImageAugConfig
from unikd.exps.cli import run_cli
from unikd.exps.exp_files import load_exp_class
from unikd.models.configs import (
    PRESETS,
    REMOVE,
    SMALL,
    Preset,
    Replace,
    derive,
    image_aug_for,
    register_preset,
)

SMALL_CAMERA = SMALL.config["camera"]
TABLE = Path(__file__).parent / "fixtures" / "presets" / "preset_table.json"
EXP_DIR = Path(__file__).resolve().parents[1] / "exps/nuscenes/BEVFusion"
# the image augmentation of each preset before presets held it (a table by name in exps/base_exp.py);
# the presets not named here read BEVFusion's nuScenes images, ImageAugConfig()
SMALL_IMAGES = ImageAugConfig(final_size=(128, 352), train_resize=(0.2, 0.26), test_resize=0.23, reduced_decode=True)
UNIDISTILL_IMAGES = ImageAugConfig(train_resize=(0.386, 0.55), test_resize=0.44)
FROZEN_IMAGE_AUG = {
    **dict.fromkeys(("small", "small_transfusion", "small_bevfusion", "small_mgfm"), SMALL_IMAGES),
    **dict.fromkeys(("unidistill_camera", "unidistill_fusion"), UNIDISTILL_IMAGES),
}


def canonical(value):
    """`value` with every dict as its sorted (key, value) pairs: equal for equal configurations, tuples and lists,
    ints and floats told apart by `repr`."""
    if isinstance(value, dict):
        return tuple(sorted((key, canonical(item)) for key, item in value.items()))
    if isinstance(value, (list, tuple)):
        return type(value)(canonical(item) for item in value)
    return value


def preset_table() -> dict[str, str]:
    return {name: repr(canonical(preset.config)) for name, preset in sorted(PRESETS.items())}


@pytest.mark.parametrize(
    "size", sorted(name for name, preset in PRESETS.items() if preset.config.get("camera") == SMALL_CAMERA)
)
def test_presets_with_the_small_camera_read_small_images(size):
    assert image_aug_for(size) == image_aug_for("small")
    assert image_aug_for(size).final_size == (128, 352)


def test_every_frozen_preset_is_unchanged():
    frozen = json.loads(TABLE.read_text())
    table = preset_table()
    assert set(frozen) <= set(table)
    for name, config in frozen.items():
        assert table[name] == config, name
        assert PRESETS[name].image_aug == FROZEN_IMAGE_AUG.get(name, ImageAugConfig()), name
    assert all(name == preset.name for name, preset in PRESETS.items())


def test_derive_merges_replaces_and_removes_sections():
    base = Preset("base", {"a": 1, "head": {"x": 1, "inner": {"p": 1, "q": 2}}, "camera": {"w": 3}, "seg": {}})
    derived = derive(base, "derived", a=2, head={"inner": {"q": 5}, "y": 0}, camera=Replace({"v": 4}), seg=REMOVE,
                     fuser={"type": "mgfm"})
    assert derived == Preset(
        "derived", {"a": 2, "head": {"x": 1, "inner": {"p": 1, "q": 5}, "y": 0}, "camera": {"v": 4}, "fuser": {"type": "mgfm"}}
    )
    assert base.config == {"a": 1, "head": {"x": 1, "inner": {"p": 1, "q": 2}}, "camera": {"w": 3}, "seg": {}}
    assert derive(derive(base, "images", image_aug=SMALL_IMAGES), "derived").image_aug == SMALL_IMAGES
    derived.config["head"]["inner"]["p"] = 9
    assert base.config["head"]["inner"]["p"] == 1  # a deep copy
    with pytest.raises(KeyError, match="derived.lidar: no such section to remove"):
        derive(base, "derived", lidar=REMOVE)
    with pytest.raises(TypeError, match="derived.a: a dict cannot be merged into 1; use Replace"):
        derive(base, "derived", a={"b": 1})
    with pytest.raises(ValueError, match="preset 'small' is already registered"):
        register_preset(derive(SMALL, "small"))


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        # small_transfusion's head has a type (a registered head): the model was built from that preset
        (("preset=small_transfusion", "model_config.head.type=centre"), ValueError, "config head.type must be one of"),
        (("model_size=small_transfusion", "model_config.head.type=centre"), ValueError, "config head.type must be one of"),
        (("preset=small", "model_config.head.type=centre"), KeyError, "model_config.head has no key 'type'; known: \\['head_conv'"),
        (("preset=small", "model_size=small"), ValueError, "preset and model_size name the same setting"),
    ],
)
def test_preset_option_is_the_model_size(tmp_path: Path, options: tuple[str, ...], error: type, message: str):
    exp_class = load_exp_class(EXP_DIR / "BEVFusion_nuscenes_transfusion_lidar_exp.py")
    argv = ["--data_root", str(tmp_path / "nuscenes"), "--output_root", str(tmp_path / "outputs"), "-b", "1",
            "--exp_options", *options]
    with pytest.raises(error, match=message):
        run_cli(exp_class, argv)
    assert not (tmp_path / "outputs").exists()


def test_small_student_distils_from_a_small_teacher_cell_for_cell(synthetic_root: Path):
    exp_class = load_exp_class(EXP_DIR / "BEVFusion_nuscenes_centerhead_lidarsmall_exp_distill_lidar.py")
    options = {"model_size": "small_student", "teacher_model_size": "small", "allow_random_teacher": True}
    exp = exp_class(data_root=str(synthetic_root), exp_options=options)
    student, teacher = exp.model.output_shapes(), exp.objective.teacher.output_shapes()
    for name in ("middle_encoder", "bev", "neck"):
        assert student[name] == (teacher[name][0] // 2, *teacher[name][1:]), name
    assert student["head"] == teacher["head"] == (64, 64)
    size = sum(p.numel() for p in exp.model.parameters())
    assert 2 * size < sum(p.numel() for p in exp.objective.teacher.parameters())
    dataset = exp.datamodule.train_dataset()
    batch = collate_batch([dataset[0], dataset[1]])
    losses = exp.objective.distiller(exp.model(batch), exp.objective.teacher(batch), batch)
    assert set(losses) >= {f"distill/{name}" for name in ("feature", "relation", "response", "infonce")}
    assert all(torch.isfinite(loss) for loss in losses.values())


if __name__ == "__main__":
    TABLE.write_text(json.dumps(preset_table(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(PRESETS)} presets to {TABLE}")
