"""The nuScenes detection evaluation (devkit `DetectionEval.evaluate`), vectorised over flat box arrays.

Same rules as the devkit: per class and distance threshold, predictions are taken by descending
score (equal scores: the later prediction first, as the devkit's reversed sort of (score, index)
pairs does) and each is matched to the nearest untaken ground-truth box of its sample and class
(2D centre distance, first such box on equal distances) when that distance is below the threshold;
precision is interpolated at 101 recall points, AP integrates it above min recall and min
precision, and the TP errors at `dist_th_tp` are cumulative means resampled at those points.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
from nuscenes.eval.detection.data_classes import DetectionConfig

from unikd.data.classes import CLASSES
from unikd.evaluation.geometry import row_norms

TP_METRICS: tuple[str, ...] = ("trans_err", "scale_err", "orient_err", "vel_err", "attr_err")
# TP errors the devkit does not report for a class.
EXCLUDED_TP_METRICS: dict[str, tuple[str, ...]] = {
    "traffic_cone": ("attr_err", "vel_err", "orient_err"),
    "barrier": ("attr_err", "vel_err"),
}
RECALL_POINTS = 101
# Upper bound on candidate (prediction, ground truth) pairs held at once while searching matches.
_PAIR_CHUNK = 1 << 21


@dataclass(frozen=True)
class BoxArrays:
    """Boxes of many samples as flat arrays in the devkit's list order (sample by sample).

    sample [N] (index of the sample), translation [N, 3], size [N, 3] (w, l, h), yaw [N],
    velocity [N, 2] (may be nan for ground truth), label [N] (index into CLASSES),
    attribute [N] (index into ATTRIBUTE_NAMES, -1 for none), score [N] (unused for ground truth).
    """

    sample: np.ndarray
    translation: np.ndarray
    size: np.ndarray
    yaw: np.ndarray
    velocity: np.ndarray
    label: np.ndarray
    attribute: np.ndarray
    score: np.ndarray

    def select(self, index: np.ndarray) -> BoxArrays:
        """The boxes at a boolean mask or integer index."""
        return BoxArrays(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


@dataclass(frozen=True)
class _Curve:
    """The devkit's DetectionMetricData reduced to what the metrics need."""

    precision: np.ndarray
    confidence: np.ndarray
    errors: dict[str, np.ndarray]


_NO_PREDICTIONS = _Curve(
    precision=np.zeros(RECALL_POINTS),
    confidence=np.zeros(RECALL_POINTS),
    errors={name: np.ones(RECALL_POINTS) for name in TP_METRICS},
)


def evaluate_detections(gt: BoxArrays, pred: BoxArrays, config: DetectionConfig) -> dict:
    """Ground truth and predictions after the devkit's filtering -> the devkit's metrics summary.

    The ground truth must be ordered by sample. Returns the keys of the devkit's
    `metrics_summary.json` except `meta`, with `eval_time` set to 0.
    """
    if config.dist_fcn != "center_distance":
        raise ValueError(f"only the center_distance matching is implemented, config asks {config.dist_fcn!r}")
    if len(gt.sample) and np.any(np.diff(gt.sample) < 0):
        raise ValueError("ground-truth boxes must be ordered by sample")
    dist_ths = [float(th) for th in config.dist_ths]
    tp_index = dist_ths.index(float(config.dist_th_tp))
    label_aps: dict[str, dict[float, float]] = {}
    label_tp_errors: dict[str, dict[str, float]] = {}
    for name in config.class_names:
        period = np.pi if name == "barrier" else 2 * np.pi
        curves = _class_curves(gt, pred, CLASSES.index(name), dist_ths, tp_index, period)
        label_aps[name] = {
            th: _average_precision(curve.precision, config.min_recall, config.min_precision)
            for th, curve in zip(config.dist_ths, curves, strict=True)
        }
        tp_curve = curves[tp_index]
        label_tp_errors[name] = {
            metric: (
                float("nan")
                if metric in EXCLUDED_TP_METRICS.get(name, ())
                else _tp_error(tp_curve.confidence, tp_curve.errors[metric], config.min_recall)
            )
            for metric in TP_METRICS
        }
    return _summary(label_aps, label_tp_errors, config)


def _summary(
    label_aps: dict[str, dict[float, float]],
    label_tp_errors: dict[str, dict[str, float]],
    config: DetectionConfig,
) -> dict:
    mean_dist_aps = {name: float(np.mean(list(aps.values()))) for name, aps in label_aps.items()}
    mean_ap = float(np.mean(list(mean_dist_aps.values())))
    tp_errors = {
        metric: float(np.nanmean([label_tp_errors[name][metric] for name in config.class_names]))
        for metric in TP_METRICS
    }
    tp_scores = {metric: max(0.0, 1.0 - error) for metric, error in tp_errors.items()}
    weight = config.mean_ap_weight
    nd_score = float(weight * mean_ap + np.sum(list(tp_scores.values()))) / float(weight + len(tp_scores))
    return {
        "label_aps": label_aps,
        "mean_dist_aps": mean_dist_aps,
        "mean_ap": mean_ap,
        "label_tp_errors": label_tp_errors,
        "tp_errors": tp_errors,
        "tp_scores": tp_scores,
        "nd_score": nd_score,
        "eval_time": 0.0,
        "cfg": config.serialize(),
    }


def _class_curves(
    gt: BoxArrays, pred: BoxArrays, label: int, dist_ths: list[float], tp_index: int, period: float
) -> list[_Curve]:
    """The devkit's `accumulate` for one class at every distance threshold."""
    gt_index = np.flatnonzero(gt.label == label)
    num_positive = len(gt_index)
    if num_positive == 0:
        return [_NO_PREDICTIONS] * len(dist_ths)
    pred_index = np.flatnonzero(pred.label == label)
    scores = pred.score[pred_index]
    order = pred_index[np.lexsort((-np.arange(len(pred_index)), -scores))]
    matched = greedy_match(
        gt.sample[gt_index],
        gt.translation[gt_index, :2],
        pred.sample[order],
        pred.translation[order, :2],
        dist_ths,
    )
    recall_points = np.linspace(0, 1, RECALL_POINTS)
    confidence = pred.score[order]
    curves = []
    for t in range(len(dist_ths)):
        is_tp = matched[t] >= 0
        if not is_tp.any():
            curves.append(_NO_PREDICTIONS)
            continue
        tp = np.cumsum(is_tp).astype(float)
        fp = np.cumsum(~is_tp).astype(float)
        recall = tp / float(num_positive)
        precision = np.interp(recall_points, recall, tp / (fp + tp), right=0)
        conf = np.interp(recall_points, recall, confidence, right=0)
        errors = {}
        if t == tp_index:
            matched_pred = order[is_tp]
            matched_gt = gt_index[matched[t][is_tp]]
            match_conf = pred.score[matched_pred][::-1]
            errors = {
                name: np.interp(conf[::-1], match_conf, _cummean(error)[::-1])[::-1]
                for name, error in _match_errors(gt, pred, matched_gt, matched_pred, period).items()
            }
        curves.append(_Curve(precision, conf, errors))
    return curves


def greedy_match(
    gt_sample: np.ndarray,
    gt_xy: np.ndarray,
    pred_sample: np.ndarray,
    pred_xy: np.ndarray,
    dist_ths: list[float],
) -> np.ndarray:
    """Greedy centre-distance matching of predictions (in processing order) to ground truth of one class.

    gt_sample must be sorted. Returns [T, P]: for each threshold and prediction, the index of the
    matched ground-truth box, or -1. Samples are independent, so the k-th candidate prediction of
    every sample is matched in the same vectorised step.
    """
    matched = np.full((len(dist_ths), len(pred_sample)), -1, dtype=np.int64)
    pair_pred, pair_gt, pair_dist = _candidate_pairs(gt_sample, gt_xy, pred_sample, pred_xy, max(dist_ths))
    if len(pair_pred) == 0:
        return matched
    # Rank of each candidate prediction among those of its sample, in processing order.
    candidates = np.unique(pair_pred)
    by_sample = np.argsort(pred_sample[candidates], kind="stable")
    _, group_start, group_size = np.unique(
        pred_sample[candidates][by_sample], return_index=True, return_counts=True
    )
    rank = np.zeros(len(pred_sample), dtype=np.int64)
    rank[candidates[by_sample]] = np.arange(len(candidates)) - np.repeat(group_start, group_size)
    # Pairs by step, then prediction, then distance, then ground-truth order (the devkit's first minimum).
    order = np.lexsort((pair_gt, pair_dist, pair_pred, rank[pair_pred]))
    pair_pred, pair_gt, pair_dist = pair_pred[order], pair_gt[order], pair_dist[order]
    step_bounds = np.searchsorted(rank[pair_pred], np.arange(rank.max() + 2))
    within = pair_dist[None, :] < np.asarray(dist_ths)[:, None]
    taken = np.zeros((len(dist_ths), len(gt_sample)), dtype=bool)
    for step in range(rank.max() + 1):
        lo, hi = step_bounds[step], step_bounds[step + 1]
        step_pred, step_gt = pair_pred[lo:hi], pair_gt[lo:hi]
        valid = within[:, lo:hi] & ~taken[:, step_gt]
        pred_start = np.flatnonzero(np.r_[True, step_pred[1:] != step_pred[:-1]])
        first = np.minimum.reduceat(np.where(valid, np.arange(hi - lo), hi - lo), pred_start, axis=1)
        th_index, _ = np.nonzero(first < hi - lo)
        pair = first[first < hi - lo]
        taken[th_index, step_gt[pair]] = True
        matched[th_index, step_pred[pair]] = step_gt[pair]
    return matched


def _candidate_pairs(
    gt_sample: np.ndarray, gt_xy: np.ndarray, pred_sample: np.ndarray, pred_xy: np.ndarray, max_dist: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(prediction, ground truth, distance) of every same-sample pair closer than max_dist."""
    starts = np.searchsorted(gt_sample, pred_sample, side="left")
    counts = np.searchsorted(gt_sample, pred_sample, side="right") - starts
    ends = np.cumsum(counts)
    chunk_ends = np.arange(_PAIR_CHUNK, ends[-1] if len(ends) else 0, _PAIR_CHUNK)
    bounds = np.r_[0, np.searchsorted(ends, chunk_ends), len(ends)]
    out_pred, out_gt, out_dist = [], [], []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        pred, gt = expand_ranges(starts[lo:hi], counts[lo:hi])
        pred += lo
        delta = pred_xy[pred] - gt_xy[gt]
        dist = row_norms(delta)
        close = dist < max_dist
        out_pred.append(pred[close])
        out_gt.append(gt[close])
        out_dist.append(dist[close])
    return np.concatenate(out_pred), np.concatenate(out_gt), np.concatenate(out_dist)


def expand_ranges(starts: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Groups i covering items starts[i] .. starts[i] + counts[i] - 1 -> (group, item) of every member."""
    counts = np.asarray(counts, dtype=np.int64)
    group = np.repeat(np.arange(len(counts)), counts)
    offset = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return group, np.repeat(np.asarray(starts, dtype=np.int64), counts) + offset


def _match_errors(
    gt: BoxArrays, pred: BoxArrays, gt_index: np.ndarray, pred_index: np.ndarray, period: float
) -> dict[str, np.ndarray]:
    """Per match, in processing order: the devkit's translation, velocity, scale, orientation and attribute errors."""
    delta = pred.translation[pred_index, :2] - gt.translation[gt_index, :2]
    velocity = pred.velocity[pred_index] - gt.velocity[gt_index]
    gt_size, pred_size = gt.size[gt_index], pred.size[pred_index]
    common = np.minimum(gt_size, pred_size)
    intersection = common[:, 0] * common[:, 1] * common[:, 2]
    gt_volume = gt_size[:, 0] * gt_size[:, 1] * gt_size[:, 2]
    pred_volume = pred_size[:, 0] * pred_size[:, 1] * pred_size[:, 2]
    # Smallest signed angle from prediction to ground truth, for a period of pi or 2 pi.
    yaw_diff = (gt.yaw[gt_index] - pred.yaw[pred_index] + period / 2) % period - period / 2
    gt_attribute = gt.attribute[gt_index]
    attr_err = np.where(gt_attribute < 0, np.nan, 1.0 - (gt_attribute == pred.attribute[pred_index]))
    return {
        "trans_err": row_norms(delta),
        "vel_err": row_norms(velocity),
        "scale_err": 1 - intersection / (gt_volume + pred_volume - intersection),
        "orient_err": np.abs(yaw_diff),
        "attr_err": attr_err,
    }


def _cummean(values: np.ndarray) -> np.ndarray:
    """Nan-aware cumulative mean; all ones when every value is nan (the devkit's rule)."""
    valid = ~np.isnan(values)
    if not valid.any():
        return np.ones(len(values))
    total = np.nancumsum(values)
    count = np.cumsum(valid)
    return np.divide(total, count, out=np.zeros_like(total), where=count != 0)


def _average_precision(precision: np.ndarray, min_recall: float, min_precision: float) -> float:
    """The devkit's `calc_ap`: mean precision above min recall, less min precision, normalised."""
    clipped = np.clip(precision[round(100 * min_recall) + 1 :] - min_precision, 0, None)
    return float(np.mean(clipped)) / (1.0 - min_precision)


def _tp_error(confidence: np.ndarray, error: np.ndarray, min_recall: float) -> float:
    """The devkit's `calc_tp`: mean error from just above min recall up to the highest recall reached."""
    first = round(100 * min_recall) + 1
    reached = np.flatnonzero(confidence)
    last = reached[-1] if len(reached) else 0
    if last < first:
        return 1.0
    return float(np.mean(error[first : last + 1]))
