"""MapSegmentationMetric against a naive per-class, per-threshold count, its sum across processes, its table."""

import numpy as np
import pytest
import torch
from torchmetrics.utilities.data import dim_zero_sum

from unikd.evaluation import MapSegmentationMetric, format_map_metrics
from unikd.evaluation.map_segmentation import THRESHOLDS

CLASSES = ("drivable_area", "ped_crossing", "walkway", "stop_line", "carpark_area", "divider")


def naive_ious(scores: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """IoU [K, T] by one count per class and threshold over all samples and cells."""
    ious = np.zeros((scores.shape[1], len(THRESHOLDS)))
    for k in range(scores.shape[1]):
        for j, threshold in enumerate(THRESHOLDS):
            predicted = scores[:, k] >= np.float32(threshold)
            truth = masks[:, k]
            tp = np.sum(predicted & truth)
            fp = np.sum(predicted & ~truth)
            fn = np.sum(~predicted & truth)
            ious[k, j] = tp / (tp + fp + fn + 1e-7)
    return ious


def random_batch(seed: int, size: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores that follow the masks loosely, a few exactly at a threshold, and one class never present."""
    generator = torch.Generator().manual_seed(seed)
    masks = torch.rand(size, 6, 9, 11, generator=generator) > 0.6
    masks[:, 3] = False
    scores = (0.3 * masks + 0.7 * torch.rand(size, 6, 9, 11, generator=generator)).clamp(0, 1)
    scores[:, :, 0, :4] = torch.tensor([0.35, 0.5, 0.65, 0.45])
    return scores, masks


def test_metric_matches_naive_counts() -> None:
    batches = [random_batch(seed) for seed in range(3)]
    metric = MapSegmentationMetric(CLASSES)
    for scores, masks in batches:
        metric.update(scores, masks)
    figures = metric.compute()
    scores = np.concatenate([s.numpy() for s, _ in batches])
    masks = np.concatenate([m.numpy() for _, m in batches])
    ious = naive_ious(scores, masks)
    for k, name in enumerate(CLASSES):
        assert figures[f"IoU/{name}"].item() == pytest.approx(ious[k].max(), abs=1e-12)
        for j, threshold in enumerate(THRESHOLDS):
            assert figures[f"IoU@{threshold:.2f}/{name}"].item() == pytest.approx(ious[k, j], abs=1e-12)
    assert figures["mIoU"].item() == pytest.approx(ious.max(axis=1).mean(), abs=1e-12)
    assert figures["IoU/stop_line"].item() == 0.0  # never in the masks: no TP at any threshold
    assert 0 < figures["mIoU"].item() < 1
    assert metric.summary["num_samples"] == 9
    # the best threshold differs between classes: the figure is the max per class, not one global threshold
    assert metric.summary["mean_iou"] == pytest.approx(np.mean([ious[k].max() for k in range(6)]))


def test_scores_at_a_threshold_count_as_predicted() -> None:
    masks = torch.zeros(1, 6, 1, 2, dtype=torch.bool)
    masks[0, 0, 0, 0] = True
    scores = torch.zeros(1, 6, 1, 2)
    scores[0, 0, 0, 0] = 0.5  # predicted at thresholds <= 0.5, missed above
    metric = MapSegmentationMetric(CLASSES)
    metric.update(scores, masks)
    figures = metric.compute()
    assert [figures[f"IoU@{t:.2f}/drivable_area"].item() for t in THRESHOLDS] == pytest.approx(
        [1.0] * 4 + [0.0] * 3, abs=1e-6
    )


def test_states_are_summed_across_processes() -> None:
    """A metric synced by torchmetrics' own reduction, with a gather that returns its states and a second
    process's, equals one metric given every batch."""

    def gather_both(tensor: torch.Tensor, group=None) -> list[torch.Tensor]:
        name = next(name for name in first._reductions if getattr(first, name) is tensor)
        return [tensor, getattr(second, name)]

    first = MapSegmentationMetric(CLASSES, dist_sync_fn=gather_both, distributed_available_fn=lambda: True)
    second, whole = MapSegmentationMetric(CLASSES), MapSegmentationMetric(CLASSES)
    for seed, part in ((0, first), (1, second), (2, first)):
        scores, masks = random_batch(seed)
        part.update(scores, masks)
        whole.update(scores, masks)
    assert all(first._reductions[name] is dim_zero_sum for name in ("tp", "fp", "fn", "num_samples"))
    assert first.tp.dtype == torch.int64
    synced = {key: value.item() for key, value in first.compute().items()}
    assert synced == {key: value.item() for key, value in whole.compute().items()}
    assert first.summary["num_samples"] == 9
    assert int(first.num_samples) == 6  # the local state is back after the sync


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_bad_input_is_an_error() -> None:
    metric = MapSegmentationMetric(CLASSES, expected_samples=2)
    scores, masks = random_batch(0, size=1)
    with pytest.raises(RuntimeError, match="before any sample"):
        metric.compute()
    with pytest.raises(ValueError, match="must both be"):
        metric.update(scores, masks[:, :5])
    with pytest.raises(ValueError, match="probabilities"):
        metric.update(scores * 3 - 1, masks)
    metric.update(scores, masks)
    with pytest.raises(ValueError, match="cover 1 samples, expected the split's 2"):
        metric.compute()


def test_table() -> None:
    metric = MapSegmentationMetric(CLASSES)
    metric.update(*random_batch(0))
    metric.compute()
    table = format_map_metrics(metric.summary)
    lines = table.splitlines()
    assert lines[1].split("\t")[1:3] == ["IoU   ", "@0.35 "]
    assert [line.split("\t")[0].strip() for line in lines[2:8]] == list(CLASSES)
    assert float(lines[2].split("\t")[1]) == pytest.approx(
        metric.summary["class_iou"]["drivable_area"], abs=5e-4
    )
    assert lines[-1] == f"mIoU: {metric.summary['mean_iou']:.4f} (3 samples)"
