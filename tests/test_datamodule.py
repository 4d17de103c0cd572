"""The data module: workers per process, persistent workers that still see each epoch, infos prepared once."""

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from unikd.data import infos as infos_module
from unikd.data.datamodule import DataSettings, NuScenesDataModule, default_num_workers
from unikd.data.image_aug import ImageAugConfig
from unikd.data.infos import build_infos, load_nuscenes, load_or_build_infos, prepared_infos_path
from unikd.data.nuscenes_dataset import NuScenesDetectionDataset
from unikd.data.transforms import BEVAugConfig
from unikd.exps.exp_files import load_exp_class

LIDAR_EXP = Path(__file__).resolve().parents[1] / "exps/nuscenes/BEVFusion/BEVFusion_nuscenes_centerhead_lidar_exp.py"
RANGE = (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0)


def settings(root: Path, **overrides) -> DataSettings:
    values = dict(
        data_root=str(root), version="v1.0-mini", point_cloud_range=RANGE, batch_size=2, num_sweeps=1, seed=7,
        image_aug=ImageAugConfig(), bev_aug=BEVAugConfig(), train_modalities=("lidar",), eval_modalities=("lidar",),
    )
    return DataSettings(**{**values, **overrides})


def attached(data: NuScenesDataModule, devices: int = 1, epoch: int = 0) -> NuScenesDataModule:
    """The data module as a one-process trainer on the CPU sees it."""
    data.trainer = SimpleNamespace(
        global_rank=0, world_size=1, current_epoch=epoch, num_devices=devices, strategy=SimpleNamespace(root_device=torch.device("cpu")),
        state=SimpleNamespace(fn="fit"),
    )
    return data


@pytest.mark.parametrize(("cores", "devices", "expected"), [(64, 8, 8), (16, 8, 2), (96, 1, 8), (2, 4, 1), (12, 2, 6)])
def test_default_workers_share_the_cores_among_the_devices(cores: int, devices: int, expected: int) -> None:
    assert default_num_workers(devices, cores) == expected


def test_workers_default_to_the_cores_per_device_and_an_explicit_count_wins(synthetic_root: Path) -> None:
    exp = load_exp_class(LIDAR_EXP)(data_root=str(synthetic_root), exp_options={"model_size": "small"})
    assert exp.num_workers is None and exp.datamodule.settings.num_workers is None
    cores = len(os.sched_getaffinity(0))
    assert attached(exp.datamodule, devices=1).num_workers() == max(1, min(8, cores))
    explicit = load_exp_class(LIDAR_EXP)(data_root=str(synthetic_root), exp_options={"model_size": "small", "num_workers": 0})
    assert attached(explicit.datamodule).num_workers() == 0
    with pytest.raises(ValueError, match="num_workers must be at least 0"):
        load_exp_class(LIDAR_EXP)(data_root=str(synthetic_root), exp_options={"model_size": "small", "num_workers": -1})


def test_persistent_workers_draw_each_epochs_augmentation(synthetic_root: Path) -> None:
    """One persistent worker serves two epochs: each batch is what a fresh dataset at that epoch gives, and the
    BEV augmentation differs between the epochs."""
    data = attached(NuScenesDataModule(settings(synthetic_root, num_workers=1)))
    loader = data.train_dataloader()
    assert loader.persistent_workers and loader.num_workers == 1
    reference = NuScenesDetectionDataset(synthetic_root, "v1.0-mini", "mini_train", RANGE, num_sweeps=1, training=True,
                                         bev_aug=BEVAugConfig(), seed=7)  # read in this process, not by a worker
    bda = {}
    for epoch in (0, 1):
        loader.sampler.set_epoch(epoch)  # as Lightning does at each epoch start
        order = loader.sampler.sampler.shard(epoch)
        reference.set_epoch(epoch)
        for position, batch in enumerate(loader):
            for row, index in enumerate(batch["index"].tolist()):
                assert index == order[2 * position + row]
                expected = reference[index]
                assert torch.equal(batch["bda"][row], expected["bda"])
                assert torch.equal(batch["points"][row], expected["points"])
                bda[(epoch, index)] = batch["bda"][row]
    both = [index for (epoch, index) in bda if epoch == 0 and (1, index) in bda]
    assert both and all(not torch.equal(bda[(0, index)], bda[(1, index)]) for index in both)


def test_resumed_loader_starts_after_the_batches_done(synthetic_root: Path) -> None:
    data = attached(NuScenesDataModule(settings(synthetic_root, num_workers=0)), epoch=1)
    data.resume(1, 2)  # two batches of epoch 1 were done
    loader = data.train_dataloader()
    indices = [index for batch in loader for index in batch["index"].tolist()]
    rest = loader.sampler.sampler.shard(1)[4:]
    assert indices == rest[: len(rest) // 2 * 2]  # the incomplete last batch dropped
    assert [index for batch in loader for index in batch["index"].tolist()][:4] == loader.sampler.sampler.shard(1)[:4]


def test_infos_are_prepared_once_and_read_without_the_devkit(
    synthetic_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = attached(NuScenesDataModule(settings(synthetic_root)))
    data.prepare_data()  # fitting: both splits
    for split in ("mini_train", "mini_val"):
        assert prepared_infos_path(synthetic_root, "v1.0-mini", split, 1).is_file()
    built = build_infos(load_nuscenes(synthetic_root, "v1.0-mini"), "mini_val", 1)

    def no_devkit(*args, **kwargs):
        raise AssertionError("the devkit loaded the tables again")

    monkeypatch.setattr(infos_module, "load_nuscenes", no_devkit)
    data.prepare_data()  # prepared already: nothing built
    read = load_or_build_infos(synthetic_root, "v1.0-mini", "mini_val", max_sweeps=1)
    assert [info["token"] for info in read] == [info["token"] for info in built]
    assert all(torch.equal(torch.as_tensor(a["gt_boxes"]), torch.as_tensor(b["gt_boxes"])) for a, b in zip(read, built, strict=True))
    assert data.val_dataset().infos[3]["token"] == built[3]["token"]
