"""The bootstrap over test images and the paired test (yolo_mlops/yolo/uncertainty.py), on per-image statistics
built by hand: no training. The reference is Ultralytics' own ap_per_class / DetMetrics called on the explicitly
resampled arrays, and numpy's percentile."""

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from ultralytics.utils.metrics import DetMetrics, ap_per_class

from yolo_mlops.core.errors import PipelineError
from yolo_mlops.core.vocabulary import CLASS_METRICS, CLASSES_KEY, INTERVAL_BOUNDS, interval_key
from yolo_mlops.yolo.evaluate import with_intervals
from yolo_mlops.yolo.uncertainty import (
    BOOTSTRAP_SEED,
    ImageStats,
    collect,
    images_needed,
    interval,
    load_image_stats,
    paired_test,
    point_estimates,
    replicates,
    resample_counts,
    save_image_stats,
)

THRESHOLDS = np.linspace(0.5, 0.95, 10)


def random_stats(images: int, classes: int, predictions: int, seed: int, pairs: bool = False,
                 swap: bool = False) -> ImageStats:
    """Random but plausible statistics: images without labels, classes without predictions, distinct confidences,
    true positives at the higher IoU thresholds a subset of those at the lower ones. With `pairs`, images 0 and 1,
    2 and 3, ... have the same labels; with `swap` too, their predictions are exchanged: a model of the same quality
    that errs on other images."""
    rng = np.random.default_rng(seed)
    tp, conf, pred_cls, target_cls = [], [], [], []
    for _ in range(images):
        count = int(rng.integers(0, 2 * predictions + 1))
        iou = np.where(rng.random(count) < 0.4, rng.random(count) * 0.5 + 0.5, 0.0)
        tp.append(iou[:, None] >= THRESHOLDS[None, :])
        conf.append(rng.random(count).astype(np.float32))
        pred_cls.append(rng.integers(0, classes, count).astype(np.float32))
        target_cls.append(rng.integers(0, max(1, classes - 1), int(rng.integers(0, 4))).astype(np.float32))
    if pairs:
        target_cls = [target_cls[i & ~1] for i in range(images)]
    if swap:
        tp, conf, pred_cls = ([values[i ^ 1] for i in range(images)] for values in (tp, conf, pred_cls))
    return collect([f"{i:03d}.jpg" for i in range(images)], [f"c{c}" for c in range(classes)],
                   tp, conf, pred_cls, target_cls)


def hand_stats(hits_per_image: list[list[bool]], labels: int, conf_step: float = 0.01) -> ImageStats:
    """One class; every image has `labels` boxes, and image i one prediction per entry of hits_per_image[i]: a true
    positive at every threshold (True) or a false positive (False)."""
    tp, conf, pred_cls, target_cls = [], [], [], []
    for index, hits in enumerate(hits_per_image):
        tp.append(np.repeat(np.array(hits, dtype=bool)[:, None], 10, axis=1))
        conf.append((0.9 - conf_step * (index + np.arange(len(hits)) / 10)).astype(np.float32))
        pred_cls.append(np.zeros(len(hits)))
        target_cls.append(np.zeros(labels))
    return collect([f"{i:02d}.jpg" for i in range(len(hits_per_image))], ["person"], tp, conf, pred_cls, target_cls)


def resampled(stats: ImageStats, draw: np.ndarray) -> tuple[np.ndarray, ...]:
    """The arrays Ultralytics would see on the images of `draw`, in that order (an image drawn twice, twice)."""
    chosen = np.concatenate([np.flatnonzero(stats.pred_image == i) for i in draw])
    target = np.concatenate([np.repeat(np.arange(len(stats.names)), stats.labels[i]) for i in draw])
    return stats.tp[chosen], stats.conf[chosen], stats.pred_cls[chosen].astype(float), target.astype(float)


def ultralytics_metrics(stats: ImageStats, draw: np.ndarray) -> dict[str, float]:
    """ap_per_class on the resampled arrays, reduced as Ultralytics' Metric does, under replicates' names."""
    _, _, precision, recall, _, ap, classes, *_ = ap_per_class(*resampled(stats, draw))
    results = {"mAP50-95": ap.mean() if len(ap) else 0.0, "mAP50": ap[:, 0].mean() if len(ap) else 0.0,
               "precision": precision.mean() if len(ap) else 0.0, "recall": recall.mean() if len(ap) else 0.0}
    if len(stats.names) > 1:
        for row, class_id in enumerate(classes):
            prefix = f"classes.{stats.names[class_id]}."
            results |= {prefix + "mAP50-95": ap[row].mean(), prefix + "mAP50": ap[row, 0],
                        prefix + "precision": precision[row], prefix + "recall": recall[row]}
    return results


@pytest.mark.parametrize(("images", "classes", "predictions", "seed"), [(12, 1, 8, 0), (15, 3, 20, 1), (9, 4, 0, 2)])
def test_replicates_equal_ap_per_class_on_the_resampled_images(images, classes, predictions, seed):
    stats, resamples = random_stats(images, classes, predictions, seed), 60
    values = replicates(stats, resamples, seed=5)
    draws = np.random.default_rng(5).integers(0, images, size=(resamples, images))
    assert sorted(values) == sorted({name for draw in draws for name in ultralytics_metrics(stats, draw)})
    for row, draw in enumerate(draws):
        expected = ultralytics_metrics(stats, draw)
        for name, series in values.items():
            # a class with no box in this draw: Ultralytics reports nothing for it, the bootstrap NaN
            np.testing.assert_allclose(series[row], expected.get(name, np.nan), rtol=0, atol=1e-12, err_msg=name)


def test_point_estimates_equal_ultralytics_validator_figures():
    stats = random_stats(10, 3, 15, seed=3)
    metrics = DetMetrics(names=dict(enumerate(stats.names)))
    for image in range(len(stats.images)):
        chosen = stats.pred_image == image
        target = np.repeat(np.arange(len(stats.names)), stats.labels[image]).astype(float)
        metrics.update_stats({"tp": stats.tp[chosen], "conf": stats.conf[chosen],
                              "pred_cls": stats.pred_cls[chosen].astype(float), "target_cls": target,
                              "target_img": np.unique(target), "im_name": stats.images[image]})
    metrics.process()
    point = point_estimates(stats)
    box = metrics.box
    assert (point["mAP50-95"], point["mAP50"], point["precision"], point["recall"]) == pytest.approx(
        (box.map, box.map50, box.mp, box.mr), abs=1e-12)
    for row, class_id in enumerate(box.ap_class_index):
        precision, recall, ap50, ap = box.class_result(row)
        prefix = f"classes.{stats.names[class_id]}."
        assert (point[prefix + "precision"], point[prefix + "recall"], point[prefix + "mAP50"],
                point[prefix + "mAP50-95"]) == pytest.approx((precision, recall, ap50, ap), abs=1e-12)
    assert box.map > 0 and box.mp > 0  # the comparison is not between zeros


def test_interval_is_numpys_percentile_bootstrap():
    stats = random_stats(20, 1, 10, seed=4)
    draws = np.random.default_rng(11).integers(0, 20, size=(200, 20))
    plain = [ultralytics_metrics(stats, draw)["mAP50"] for draw in draws]
    low, high = interval(replicates(stats, 200, seed=11)["mAP50"])
    assert (low, high) == pytest.approx(tuple(np.percentile(plain, [2.5, 97.5])), abs=1e-12)
    assert low < point_estimates(stats)["mAP50"] < high
    assert interval(np.array([np.nan, 1.0, 2.0, 3.0]), level=0.5) == (1.5, 2.5)


def test_resampling_depends_only_on_images_resamples_and_seed():
    first, again = resample_counts(10, 50, seed=3), resample_counts(10, 50, seed=3)
    assert np.array_equal(first, again) and (first.sum(axis=1) == 10).all()
    assert not np.array_equal(first, resample_counts(10, 50, seed=4))
    stats = random_stats(10, 2, 10, seed=6)
    assert interval(replicates(stats, 300, seed=8)["mAP50-95"]) == interval(replicates(stats, 300, seed=8)["mAP50-95"])
    assert interval(replicates(stats, 300, seed=8)["mAP50-95"]) != interval(replicates(stats, 300, seed=9)["mAP50-95"])


def test_identical_models_cannot_be_told_apart():
    stats = random_stats(10, 1, 10, seed=7)
    result = paired_test(stats, stats, "mAP50-95", resamples=500, seed=0)
    assert (result.difference, result.low, result.high, result.probability) == (0, 0, 0, 0.5)
    assert result.images_needed is None
    # Two models of the same quality that err on different images: a probability near 0.5, 0 in the interval.
    one, other = random_stats(10, 1, 10, seed=7, pairs=True), random_stats(10, 1, 10, seed=7, pairs=True, swap=True)
    result = paired_test(one, other, "mAP50", resamples=1000, seed=0)
    assert result.difference == pytest.approx(0, abs=1e-12)
    assert result.low < 0 < result.high
    assert 0.4 < result.probability < 0.6


def test_a_model_better_on_every_image_wins_every_resample():
    champion = hand_stats([[True, False]] * 10, labels=2)  # a false positive and a missed box on every image
    challenger = hand_stats([[True, True]] * 10, labels=2)
    result = paired_test(challenger, champion, "mAP50-95", resamples=500, seed=1)
    assert result.probability == 1.0
    assert 0 < result.low <= result.high and result.difference > 0
    assert result.images_needed is not None and result.images_needed <= 10


def test_paired_test_refuses_different_images_and_unknown_metrics():
    stats = random_stats(10, 1, 5, seed=8)
    with pytest.raises(ValueError, match="different images"):
        paired_test(stats, random_stats(9, 1, 5, seed=8), "mAP50", resamples=10, seed=0)
    renamed = ImageStats(**{**stats.__dict__, "images": ("other.jpg", *stats.images[1:])})
    with pytest.raises(ValueError, match="different images.*other.jpg"):
        paired_test(renamed, stats, "mAP50", resamples=10, seed=0)
    relabelled = ImageStats(**{**stats.__dict__, "labels": stats.labels + 1})
    with pytest.raises(ValueError, match="labels"):
        paired_test(relabelled, stats, "mAP50", resamples=10, seed=0)
    with pytest.raises(ValueError, match="unknown metric 'f1'"):
        paired_test(stats, stats, "f1", resamples=10, seed=0)


def test_images_needed_scales_with_the_inverse_square_of_the_effect():
    assert images_needed(0.1, 0.1, 10) == 39  # 10 · 1.96² = 38.4
    assert images_needed(0.05, 0.1, 10) == 154
    assert images_needed(-0.1, 0.1, 10) == 39
    assert images_needed(0.0, 0.1, 10) is None


def test_per_image_statistics_round_trip_small(tmp_path: Path):
    stats = random_stats(10, 2, 10, seed=9)
    save_image_stats(stats, tmp_path / "test.npz")
    loaded = load_image_stats(tmp_path / "test.npz")
    assert loaded.images == stats.images and loaded.names == stats.names
    for field in ("tp", "conf", "pred_cls", "pred_image", "labels"):
        assert np.array_equal(getattr(loaded, field), getattr(stats, field)), field
    assert (tmp_path / "test.npz").stat().st_size < 8000
    assert list(tmp_path.iterdir()) == [tmp_path / "test.npz"]


def test_foreign_or_hostile_files_are_refused_naming_them(tmp_path: Path):
    stats = random_stats(4, 1, 3, seed=10)
    fields = {"images": np.array(stats.images), "names": np.array(stats.names), "tp": stats.tp, "conf": stats.conf,
              "pred_cls": stats.pred_cls, "pred_image": stats.pred_image, "labels": stats.labels}
    cases = {
        "text.npz": None,
        "pickled.npz": {**fields, "names": np.array([{"x": 1}], dtype=object)},
        "missing.npz": {key: value for key, value in fields.items() if key != "labels"},
        "extra.npz": {**fields, "more": np.zeros(1)},
        "out_of_range.npz": {**fields, "pred_image": stats.pred_image + 10},
        "numbers_as_names.npz": {**fields, "images": np.arange(4)},
    }
    for name, arrays in cases.items():
        path = tmp_path / name
        if arrays is None:
            path.write_text("not an archive")
        else:
            np.savez(path, **arrays)
        with pytest.raises(PipelineError, match=f"{path}: not per-image statistics"):
            load_image_stats(path)
    forged = tmp_path / "forged.npz"  # a header announcing 10¹³ true-positive flags: refused, not allocated
    np.savez(forged, **{key: value for key, value in fields.items() if key != "tp"})
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|b1", "fortran_order": False, "shape": (10**12, 10)})
    with zipfile.ZipFile(forged, "a") as archive:
        archive.writestr("tp.npy", header.getvalue() + b"\0" * 100)
    with pytest.raises(PipelineError, match="forged.npz: not per-image statistics"):
        load_image_stats(forged)
    escaping = tmp_path / "escaping.npz"
    np.savez(escaping, **fields)
    with zipfile.ZipFile(escaping, "a") as archive:
        archive.writestr("../labels.npy", b"")
    with pytest.raises(PipelineError, match="escaping.npz: not per-image statistics"):
        load_image_stats(escaping)


def test_intervals_sit_beside_each_figure_of_eval_json():
    """evaluate's metrics/eval.json layout: `mAP50-95_low` beside `mAP50-95`, per class beside the class's figures
    (class names may hold dots); evaluate.bootstrap 0 adds nothing."""
    base = random_stats(12, 3, 10, seed=12)
    stats = ImageStats(**{**base.__dict__, "names": ("traffic.light", "car", "never")})
    point = point_estimates(stats)
    classes = {name: {metric: point[f"classes.{name}.{metric}"] for metric in CLASS_METRICS}
               for name in ("traffic.light", "car")}
    metrics = {**{metric: point[metric] for metric in CLASS_METRICS}, "f1": 0.5, CLASSES_KEY: classes}
    widened = with_intervals(metrics, stats, 200)
    for figures in (widened, *widened[CLASSES_KEY].values()):
        for metric in CLASS_METRICS:
            assert figures[interval_key(metric, "low")] <= figures[interval_key(metric, "high")]
    assert set(widened) == {*metrics, *(interval_key(metric, bound) for metric in CLASS_METRICS
                                        for bound in INTERVAL_BOUNDS)}
    assert widened[CLASSES_KEY]["traffic.light"][interval_key("mAP50", "high")] == pytest.approx(
        interval(replicates(stats, 200, BOOTSTRAP_SEED)["classes.traffic.light.mAP50"])[1])
    assert metrics[CLASSES_KEY]["car"] == classes["car"]  # the input is left as it was
    assert with_intervals(metrics, stats, 0) == metrics
