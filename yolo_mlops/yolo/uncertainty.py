"""How sure a model's figures are, given the test images: each image's matching statistics from Ultralytics'
validator, a bootstrap over the images, and a paired test of two models evaluated on the same images.

The bootstrap draws the split's images with replacement, `resamples` times, and recomputes every metric on each
draw with Ultralytics' own definitions (ultralytics.utils.metrics.ap_per_class: COCO's 101-point AP at the 10 IoU
thresholds 0.50:0.95, precision and recall at the confidence of the best mean F1). An image drawn twice counts
twice. The draws depend only on (number of images, resamples, seed), so two models evaluated on the same images
are resampled identically: that is what makes the paired test paired.

The computation is vectorised over the draws instead of calling ap_per_class once per draw: it sorts the
predictions once by confidence and gives each one its image's count in the draw as a weight. The result equals
ap_per_class on the explicitly resampled arrays (tests/test_uncertainty.py checks it), except that predictions of
different images with exactly the same confidence are ranked by image here, where Ultralytics' unstable sort
ranks them as it falls."""

import math
import statistics
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from yolo_mlops.core.atomic import atomic_file
from yolo_mlops.core.errors import PipelineError
from yolo_mlops.core.vocabulary import CLASS_METRICS, CLASSES_KEY
from yolo_mlops.yolo.model import ultralytics

IOU_THRESHOLDS = 10  # Ultralytics' 0.50:0.95 in steps of 0.05
LEVEL = 0.95  # of every interval
# The seed of the evaluate stage's resamples: fixed, so that every experiment draws the same resamples of the same
# test images, and intervals (and the paired test) change only when the predictions do.
BOOTSTRAP_SEED = 0
_EPS = 1e-16  # as ap_per_class
_RECALL_GRID = np.linspace(0, 1, 101)  # compute_ap's COCO interpolation points
_CONF_GRID = np.linspace(0, 1, 1000)  # ap_per_class' confidence axis of the P, R and F1 curves
_CHUNK = 16_000_000  # elements of one working array (64 MB of int32): the draws are processed in chunks
_FIELDS = ("images", "names", "tp", "conf", "pred_cls", "pred_image", "labels")
_MAX_UNPACKED = 1 << 31  # bytes: a per-image statistics file that unpacks to more is refused


@dataclass(frozen=True, eq=False)  # arrays: compared field by field where needed (paired_test)
class ImageStats:
    """One model's matching statistics on one split, image by image (P predictions, I images, C classes)."""

    images: tuple[str, ...]  # file names (relative to the split's folder), sorted
    names: tuple[str, ...]  # class names by id
    tp: np.ndarray  # (P, 10) bool: the prediction is a true positive at IoU 0.50, 0.55, ..., 0.95
    conf: np.ndarray  # (P,) float32 confidence
    pred_cls: np.ndarray  # (P,) int class id
    pred_image: np.ndarray  # (P,) int index into `images`
    labels: np.ndarray  # (I, C) int: labelled boxes of each class in each image

    def __post_init__(self) -> None:
        predictions, images, classes = len(self.conf), len(self.images), len(self.names)
        problems = [
            (self.tp.shape != (predictions, IOU_THRESHOLDS) or self.tp.dtype != bool, "tp is not (P, 10) bool"),
            (self.conf.ndim != 1 or not np.issubdtype(self.conf.dtype, np.floating)
             or not np.isfinite(self.conf).all(), "conf is not (P,) finite floats"),
            (self.pred_cls.shape != (predictions,) or not np.issubdtype(self.pred_cls.dtype, np.integer)
             or ((self.pred_cls < 0) | (self.pred_cls >= classes)).any(), "pred_cls is not (P,) class ids"),
            (self.pred_image.shape != (predictions,) or not np.issubdtype(self.pred_image.dtype, np.integer)
             or ((self.pred_image < 0) | (self.pred_image >= images)).any(), "pred_image is not (P,) image indices"),
            (self.labels.shape != (images, classes) or not np.issubdtype(self.labels.dtype, np.integer)
             or (self.labels < 0).any(), "labels is not (images, classes) counts"),
            (len(set(self.images)) != images, "images are not distinct"),
        ]
        for failed, problem in problems:
            if failed:
                raise ValueError(f"per-image statistics: {problem}")


def collect(images: list[str], names: list[str], tp: list[np.ndarray], conf: list[np.ndarray],
            pred_cls: list[np.ndarray], target_cls: list[np.ndarray]) -> ImageStats:
    """ImageStats from the validator's per-image arrays (one entry per image, in any order), sorted by image."""
    order = sorted(range(len(images)), key=images.__getitem__)
    return ImageStats(
        images=tuple(images[i] for i in order), names=tuple(names),
        tp=np.concatenate([tp[i] for i in order]).astype(bool).reshape(-1, IOU_THRESHOLDS),
        conf=np.concatenate([conf[i] for i in order]).astype(np.float32),
        pred_cls=np.concatenate([pred_cls[i] for i in order]).astype(np.int64),
        pred_image=np.repeat(np.arange(len(order)), [len(conf[i]) for i in order]),
        labels=np.array([np.bincount(target_cls[i].astype(np.int64), minlength=len(names)) for i in order],
                        dtype=np.int64).reshape(len(order), len(names)),
    )


def save_image_stats(stats: ImageStats, path: Path) -> None:
    """Write `stats` as a compressed numpy archive (.npz), atomically."""
    with atomic_file(path) as staging, open(staging, "wb") as stream:
        np.savez_compressed(stream, images=np.array(stats.images, dtype=str), names=np.array(stats.names, dtype=str),
                            tp=stats.tp, conf=stats.conf, pred_cls=stats.pred_cls, pred_image=stats.pred_image,
                            labels=stats.labels)


def load_image_stats(path: Path) -> ImageStats:
    """Read what `save_image_stats` wrote; PipelineError naming the file when it is anything else."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = {info.filename: info.file_size for info in archive.infolist()}
        if sorted(members) != sorted(f"{field}.npy" for field in _FIELDS):
            raise ValueError(f"members {sorted(members)}, expected {', '.join(_FIELDS)} (.npy)")
        if sum(members.values()) > _MAX_UNPACKED:
            raise ValueError(f"unpacks to {sum(members.values())} bytes")
        with np.load(path, allow_pickle=False) as archive:
            arrays = {field: archive[field] for field in _FIELDS}
        for field in ("images", "names"):
            if arrays[field].ndim != 1 or arrays[field].dtype.kind != "U":
                raise ValueError(f"{field} is not a list of names")
        return ImageStats(images=tuple(str(x) for x in arrays["images"]), names=tuple(str(x) for x in arrays["names"]),
                          **{field: arrays[field] for field in _FIELDS[2:]})
    except (OSError, ValueError, MemoryError, zipfile.BadZipFile, EOFError) as error:  # MemoryError: a forged shape
        raise PipelineError(f"{path}: not per-image statistics written by the evaluate stage ({error})") from error


def resample_counts(images: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, images) int: how many times each image is drawn in each resample, images drawn with
    replacement by numpy's default generator seeded with `seed`; depends only on the three numbers."""
    draws = np.random.default_rng(seed).integers(0, images, size=(resamples, images))
    rows = np.arange(resamples)[:, None] * images
    counts = np.bincount((draws + rows).ravel(), minlength=resamples * images).reshape(resamples, images)
    return counts.astype(np.int32)  # int32: the cumulative sums over the predictions run several times faster


def point_estimates(stats: ImageStats) -> dict[str, float]:
    """Every metric on the split as evaluated (each image once): Ultralytics' figures."""
    once = np.ones((1, len(stats.images)), np.int32)
    return {name: float(values[0]) for name, values in _metrics(stats, once).items()}


def replicates(stats: ImageStats, resamples: int, seed: int) -> dict[str, np.ndarray]:
    """The bootstrap distribution (length `resamples`) of every metric, under the names of metrics/eval.json
    within a split: mAP50-95, mAP50, precision, recall, and `classes.<name>.<metric>` when there are several
    classes (NaN in a resample that draws no box of that class)."""
    if resamples < 1 or not stats.images:
        raise ValueError(f"bootstrap: {resamples} resamples of {len(stats.images)} images, expected at least 1 of each")
    return _metrics(stats, resample_counts(len(stats.images), resamples, seed))


def interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The percentile interval holding the central `level` of `values` (NaN left out; NaN, NaN when none)."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    if not len(values):
        return math.nan, math.nan
    low, high = np.percentile(values, [50 * (1 - level), 50 * (1 + level)])
    return float(low), float(high)


def images_needed(difference: float, spread: float, images: int, level: float = LEVEL) -> int | None:
    """How many test images would make a `level` interval of `difference` exclude 0, when its bootstrap standard
    deviation is `spread` on `images` images: the interval's width scales as 1 / sqrt(images). None when the
    difference is 0. For a paired test, `spread` is the deviation of the paired differences; for two runs on
    different test sets (unpaired), sqrt(spread_a ** 2 + spread_b ** 2)."""
    if not difference or not math.isfinite(difference):
        return None
    z = statistics.NormalDist().inv_cdf(0.5 + level / 2)
    return max(1, math.ceil(images * (z * spread / difference) ** 2))


@dataclass(frozen=True)
class PairedTest:
    """Challenger against champion on the same test images, both resampled with the same draws."""

    metric: str
    difference: float  # challenger − champion, on the images as evaluated
    low: float  # the 95 % percentile interval of the difference
    high: float
    probability: float  # share of the resamples where the challenger is better (ties count half)
    images_needed: int | None  # test images that would make the interval exclude 0 (None: difference 0)
    images: int
    resamples: int


def paired_test(challenger: ImageStats, champion: ImageStats, metric: str, resamples: int,
                seed: int) -> PairedTest:
    """The paired bootstrap of `metric` (a name of `replicates`); ValueError when the two were not evaluated on
    the same images (names, order and labels) or `metric` is unknown."""
    if challenger.images != champion.images:
        differing = next((f"{a} vs {b}" for a, b in zip(challenger.images, champion.images, strict=False) if a != b),
                         f"{len(challenger.images)} vs {len(champion.images)} images")
        raise ValueError(f"paired test: the two models were evaluated on different images ({differing})")
    if challenger.names != champion.names or not np.array_equal(challenger.labels, champion.labels):
        raise ValueError("paired test: the same images carry different classes or labels in the two evaluations")
    point_a, point_b = point_estimates(challenger), point_estimates(champion)
    if metric not in point_a:
        raise ValueError(f"paired test: unknown metric {metric!r}; expected one of {', '.join(point_a)}")
    differences = replicates(challenger, resamples, seed)[metric] - replicates(champion, resamples, seed)[metric]
    differences = differences[~np.isnan(differences)]
    low, high = interval(differences)
    difference = point_a[metric] - point_b[metric]
    probability = float(np.mean(differences > 0) + 0.5 * np.mean(differences == 0)) if len(differences) else 0.5
    spread = float(np.std(differences, ddof=1)) if len(differences) > 1 else 0.0
    return PairedTest(metric=metric, difference=difference, low=low, high=high, probability=probability,
                      images_needed=images_needed(difference, spread, len(challenger.images)),
                      images=len(challenger.images), resamples=resamples)


def _metrics(stats: ImageStats, counts: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric for each row of `counts` ((R, I) draws of each image), as ap_per_class computes it."""
    classes = [c for c in range(len(stats.names)) if stats.labels[:, c].any()]
    if not classes:  # no labelled box in the split: Ultralytics reports 0 for everything
        return {name: np.zeros(len(counts)) for name in CLASS_METRICS}
    order = np.argsort(-stats.conf, kind="stable")
    by_class = [(stats.pred_image[chosen], stats.tp[chosen], stats.conf[chosen])  # each class's, by confidence
                for chosen in (order[stats.pred_cls[order] == c] for c in classes)]
    chunk = max(1, _CHUNK // max(len(stats.conf), len(classes) * len(_CONF_GRID), 1))
    parts = [_chunk_metrics(stats, counts[start:start + chunk], classes, by_class)
             for start in range(0, len(counts), chunk)]
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def _chunk_metrics(stats: ImageStats, counts: np.ndarray, classes: list[int],
                   by_class: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    rows = len(counts)
    labels = counts @ stats.labels[:, classes]  # (R, classes): labelled boxes drawn
    ap = np.zeros((rows, len(classes), IOU_THRESHOLDS))
    p_curve, r_curve = np.zeros((rows, len(classes), len(_CONF_GRID))), np.zeros((rows, len(classes), len(_CONF_GRID)))
    for index, (images, tp, conf) in enumerate(by_class):
        if len(images):
            ap[:, index], p_curve[:, index], r_curve[:, index] = _class_curves(
                np.take(counts, images, axis=1), tp, conf, labels[:, index])
    present = labels > 0
    f1_curve = 2 * p_curve * r_curve / (p_curve + r_curve + _EPS)
    best = np.zeros(rows, dtype=int)  # ap_per_class: the confidence of the best smoothed mean F1
    mean_f1 = _mean_present(f1_curve, present)
    ultralytics()  # with the project's settings, imported only when computing (it loads torch)
    from ultralytics.utils.metrics import smooth

    for row in np.flatnonzero(present.any(axis=1)):
        best[row] = smooth(mean_f1[row], 0.1).argmax()
    precision = p_curve[np.arange(rows), :, best]  # (R, classes)
    recall = r_curve[np.arange(rows), :, best]
    results = {"mAP50-95": _mean_present(ap, present, flat=True), "mAP50": _mean_present(ap[:, :, 0], present),
               "precision": _mean_present(precision, present), "recall": _mean_present(recall, present)}
    if len(stats.names) > 1:
        for index, class_id in enumerate(classes):
            values = {"mAP50-95": ap[:, index].mean(axis=1), "mAP50": ap[:, index, 0],
                      "precision": precision[:, index], "recall": recall[:, index]}
            for metric in CLASS_METRICS:
                results[f"{CLASSES_KEY}.{stats.names[class_id]}.{metric}"] = np.where(
                    present[:, index], values[metric], np.nan)
    return results


def _mean_present(values: np.ndarray, present: np.ndarray, flat: bool = False) -> np.ndarray:
    """Mean over the classes drawn in each resample (axis 1; with `flat`, over classes and thresholds together),
    summed in the order numpy sums ap_per_class' arrays; 0 where no class is drawn, as Ultralytics reports."""
    result = np.zeros((len(values), *values.shape[2 + flat:]))
    patterns, groups = np.unique(present, axis=0, return_inverse=True)
    for index, pattern in enumerate(patterns):
        mask = groups.reshape(-1) == index
        if pattern.any():
            kept = values[mask][:, pattern]
            result[mask] = (kept.reshape(len(kept), -1) if flat else kept).mean(axis=1)
    return result


def _class_curves(weights: np.ndarray, tp: np.ndarray, conf: np.ndarray,
                  labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One class: AP at each IoU threshold (R, 10), precision and recall on the confidence grid (R, 1000), as
    ap_per_class computes them on the predictions repeated by `weights` ((R, P) draws, P sorted by confidence)."""
    rows = np.arange(len(weights))[:, None]
    drawn = np.cumsum(weights, axis=1, dtype=np.int32)  # predictions drawn up to each one
    ap = np.zeros((len(weights), IOU_THRESHOLDS))
    # The precision envelope at recall level t/n is the largest precision at or after the t-th true positive; it is
    # reached at the end of a run of copies of one prediction, so only each true positive's last copy counts.
    safe_labels = np.maximum(labels, 1)[:, None]
    level = np.floor(_RECALL_GRID * safe_labels)  # the recall level of each grid point: max t with t / n <= x
    level += (level + 1) / safe_labels <= _RECALL_GRID
    level -= level / safe_labels > _RECALL_GRID
    level = level.astype(np.int64)
    found_at_50 = np.zeros((len(weights), 0), dtype=np.int32)
    for threshold in range(IOU_THRESHOLDS):
        positions = np.flatnonzero(tp[:, threshold])
        if not len(positions):
            continue
        hits = weights[:, positions]
        found = np.cumsum(hits, axis=1, dtype=np.int32)  # true positives drawn up to each true positive
        precision = np.where(hits > 0, found / np.maximum(drawn[:, positions], 1), 0.0)
        envelope = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
        first = np.minimum(_row_searchsorted(found, level + 1), len(positions) - 1)
        curve = np.where(level < found[:, -1:], envelope[rows, first], 0.0)
        ap[:, threshold] = np.trapezoid(curve, _RECALL_GRID, axis=1)
        found_at_50 = found if threshold == 0 else found_at_50
    return ap, *_confidence_curves(drawn, found_at_50, tp[:, 0], conf, labels)


def _confidence_curves(drawn: np.ndarray, found_at_50: np.ndarray, tp50: np.ndarray, conf: np.ndarray,
                       labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall at IoU 0.5 on the confidence grid, as np.interp gives them in ap_per_class: between the
    last copy of the last prediction drawn at or above the grid's confidence and the first copy of the next.
    `drawn`: predictions drawn up to each prediction; `found_at_50`: true positives drawn up to each true positive."""
    rows = np.arange(len(drawn))[:, None]
    xp = -conf.astype(np.float64)
    above = np.searchsorted(xp, -_CONF_GRID, side="right")  # predictions at or above each grid confidence
    # Grid points with the same predictions above them share everything but their x: computed once, then spread.
    distinct, spread = np.unique(above, return_inverse=True)
    count = np.where(distinct > 0, drawn[:, np.maximum(distinct - 1, 0)], 0)  # copies drawn at or above
    total = drawn[:, -1:]
    last = np.minimum(_row_searchsorted(drawn, np.maximum(count, 1)), len(conf) - 1)
    after = np.minimum(_row_searchsorted(drawn, count + 1), len(conf) - 1)
    positives_to = np.cumsum(tp50)[last]  # true positives among the predictions up to `last`
    found_last = np.pad(found_at_50, ((0, 0), (1, 0)))[rows, positives_to]
    drawn_last = drawn[rows, last]
    found_next = found_last + tp50[after]
    x_last = xp[last][:, spread]
    exact = (count == total)[:, spread] | (x_last == -_CONF_GRID)
    none_above = (count == 0)[:, spread]
    curves = []
    for y_last, y_next, left in ((found_last / np.maximum(drawn_last, 1), found_next / (drawn_last + 1), 1.0),
                                 (found_last / (labels[:, None] + _EPS), found_next / (labels[:, None] + _EPS), 0.0)):
        with np.errstate(invalid="ignore", divide="ignore"):
            slope = ((y_next - y_last) / (xp[after] - xp[last]))[:, spread]
            between = slope * (-_CONF_GRID - x_last) + y_last[:, spread]
        curve = np.where(none_above, left, np.where(exact, y_last[:, spread], between))
        curves.append(np.where(total > 0, curve, 0.0))
    return curves[0], curves[1]


def _row_searchsorted(sorted_rows: np.ndarray, values: np.ndarray) -> np.ndarray:
    """np.searchsorted (side left) of each row of `values` in the same row of `sorted_rows` (non-decreasing)."""
    found = [np.searchsorted(row, wanted) for row, wanted in zip(sorted_rows, values, strict=True)]
    return np.array(found).reshape(values.shape)
