"""Host reads of tensor values (host syncs on a GPU) in the training step's hot path, counted on CPU."""

from collections.abc import Callable

import pytest
import torch

import unikd.models.camera.lss as lss
import unikd.models.heads.center_targets as center_targets
import unikd.ops.bev_pool as bev_pool_module
from unikd.data.classes import CLASSES
from unikd.models.heads import CenterHead
from unikd.ops.bev_grid import BEVGrid
from unikd.ops.checks import dispatched_ops


def host_reads(call: Callable[[], object]) -> list[str]:
    """The operators of `call` that read a value back (`.item()`, `bool()`, `nonzero`, `equal`, `.tolist()`)."""
    return dispatched_ops(call)[1]


@pytest.fixture
def accelerator_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    """`value_checks` as on a GPU without UNIKD_SYNC_CHECKS: the checks that read values are off."""
    for module in (center_targets, bev_pool_module, lss):
        monkeypatch.setattr(module, "value_checks", lambda tensor: False)


def test_center_head_loss_reads_nothing_back(accelerator_checks: None) -> None:
    grid = BEVGrid(x_min=-30.0, y_min=-20.0, x_max=30.0, y_max=25.0, height=45, width=60)
    head = CenterHead(8, grid=grid, shared_channels=8, head_conv=8)
    gen = torch.Generator().manual_seed(0)
    boxes = []
    for count in (7, 12):
        box = torch.rand(count, 9, generator=gen)
        box[:, :2] = box[:, :2] * 50 - 25
        box[:, 3:6] += 0.5
        boxes.append(box)
    labels = [torch.randint(0, len(CLASSES), (len(b),), generator=gen) for b in boxes]
    preds = head(torch.randn(2, 8, 45, 60, generator=gen))
    assert host_reads(lambda: head.loss(preds, boxes, labels)) == []
    # With the checks on (CPU), the boxes and labels of each sample are checked: two reads per sample.
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(center_targets, "value_checks", lambda tensor: True)
    try:
        assert len(host_reads(lambda: head.loss(preds, boxes, labels))) == 4
    finally:
        monkeypatch.undo()


def test_bev_pool_and_lss_cache_read_nothing_back(accelerator_checks: None) -> None:
    features, coords = torch.randn(5, 3), torch.tensor([[0, 1, 2], [1, 0, 3], [0, 2, 0], [1, 1, 1], [0, 0, 0]])
    assert host_reads(lambda: bev_pool_module.bev_pool(features, coords, 2, 3, 4)) == []
    matrices = tuple(torch.eye(4)[None] for _ in range(4))
    cached = ((32, 88), matrices, tuple(m._version for m in matrices), tuple(m.clone() for m in matrices))
    assert host_reads(lambda: lss._same_key(cached, ((32, 88), *matrices))) == []
    assert lss._same_key(cached, ((32, 88), *matrices))
    assert not lss._same_key(cached, ((32, 88), matrices[0].clone(), *matrices[1:]))  # equal values, new tensor
    matrices[3].mul_(2)  # modified in place since
    assert not lss._same_key(cached, ((32, 88), *matrices))
