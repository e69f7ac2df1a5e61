"""The grid's runs resampled over their test images: the per-image statistics each run's evaluate stage
logged to MLflow, read back; a run's bootstrap replicates; the paired test of a challenger against the
champion on the same images (yolo/uncertainty.py does the statistics)."""

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from yolo_mlops.core import vocabulary
from yolo_mlops.core.atomic import atomic_file, write_json
from yolo_mlops.core.errors import PipelineError
from yolo_mlops.core.paths import per_image_stats
from yolo_mlops.data.source import sha256_of
from yolo_mlops.grid.ranking import RunSummary
from yolo_mlops.yolo.uncertainty import (
    BOOTSTRAP_SEED,
    ImageStats,
    PairedTest,
    load_image_stats,
    paired_test,
    replicates,
)

DEFAULT_RESAMPLES = 1000  # when a run records no `evaluate.bootstrap`
TESTED = "test.mAP50-95"  # what the paired test compares, as the gates do
DOWNLOADS = 8  # runs whose per-image statistics are downloaded (and resampled) at once


def resamples_of(run: RunSummary) -> int:
    """The run's `evaluate.bootstrap` (the resamples its intervals were drawn with); DEFAULT_RESAMPLES when it
    records none, or 0 (no intervals in metrics/eval.json: the comparison still resamples its images)."""
    try:
        resamples = int(run.params.get("evaluate.bootstrap", DEFAULT_RESAMPLES))
    except ValueError:
        return DEFAULT_RESAMPLES
    return resamples if resamples > 0 else DEFAULT_RESAMPLES


def artifact_path(split: str) -> str:
    """Where the evaluate stage logs a split's per-image statistics in its MLflow run."""
    return f"{vocabulary.PER_IMAGE_ARTIFACTS}/{per_image_stats(split).name}"


def image_stats(client: MlflowClient, run_id: str, split: str, keep: Path | None = None) -> ImageStats | None:
    """The per-image statistics of one split that the run's evaluate stage logged; None when it logged none
    (a run evaluated before they were recorded, or a split it did not evaluate) or none that reads as such.
    `keep`: where its file is kept, downloaded."""
    with tempfile.TemporaryDirectory(dir=None if keep is None else keep.parent) as folder:
        try:
            local = Path(client.download_artifacts(run_id, artifact_path(split), folder))
            if not local.is_file():
                return None
            stats = load_image_stats(local)
        except (MlflowException, OSError, PipelineError):
            return None
        if keep is not None:
            os.replace(local, keep)
        return stats


def _fresh_replicates(client: MlflowClient, run: RunSummary, split: str) -> dict[str, np.ndarray] | None:
    """The run's replicates over `split`, downloaded and resampled now; None without per-image statistics."""
    stats = image_stats(client, run.run_id, split)
    return replicates(stats, resamples_of(run), BOOTSTRAP_SEED) if stats is not None and stats.images else None


def cached_replicates(client: MlflowClient, run: RunSummary, split: str, cache: Path) -> dict[str, np.ndarray] | None:
    """The run's replicates over `split` (`run_replicates`), kept under `cache/<run id>/` for a FINISHED run (a
    finished run never changes): its per-image statistics as downloaded, the replicates, and a record of both
    files' sha256. A file that no longer matches its record is downloaded and resampled again. Runs not finished
    are not kept."""
    if run.status != "FINISHED":
        return _fresh_replicates(client, run, split)
    folder = cache / run.run_id
    key = f"{split}-{resamples_of(run)}-{BOOTSTRAP_SEED}"
    record, values_file = folder / f"{key}.json", folder / f"{key}.npz"
    stats_file = folder / per_image_stats(split).name
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        if json.loads(record.read_text()) == {"stats": sha256_of(stats_file), "replicates": sha256_of(values_file)}:
            with np.load(values_file, allow_pickle=False) as archive:
                return dict(zip(archive["names"].tolist(), archive["values"], strict=True))
    record.unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    stats = image_stats(client, run.run_id, split, keep=stats_file)
    if stats is None or not stats.images:
        return None
    values = replicates(stats, resamples_of(run), BOOTSTRAP_SEED)
    with atomic_file(values_file) as staging, open(staging, "wb") as stream:
        np.savez(stream, names=np.array(list(values), dtype=str), values=np.stack(list(values.values())))
    write_json(record, {"stats": sha256_of(stats_file), "replicates": sha256_of(values_file)})
    return values


def run_replicates(client: MlflowClient, runs: Iterable[RunSummary], split: str,
                   cache: Path | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Each run's bootstrap replicates over the images of `split` (run id → metric → values), seeded alike:
    runs evaluated on the same images are resampled identically. Runs without per-image statistics are left out.
    `cache`: where finished runs' replicates are kept (`cached_replicates`). DOWNLOADS runs at a time."""
    runs = list(runs)
    with ThreadPoolExecutor(max_workers=DOWNLOADS) as pool:
        found = pool.map(lambda run: _fresh_replicates(client, run, split) if cache is None
                         else cached_replicates(client, run, split, cache), runs)
        return {run.run_id: values for run, values in zip(runs, found, strict=True) if values is not None}


@dataclass(frozen=True)
class Paired:
    """The challenger against the champion on the same test images, or why that comparison is not possible."""

    test: PairedTest | None
    images: int  # test images both were evaluated on (0 without a test)
    resamples: int
    why_not: str = ""  # when `test` is None: why the decision falls back to the margin gate


def paired(client: MlflowClient, challenger: RunSummary, champion_run_id: str, champion_dataset: str | None,
           champion_version: str) -> Paired:
    """The paired bootstrap of the challenger's and the champion's test mAP50-95, when both were evaluated on
    the same dataset (DVC md5) and both logged per-image statistics."""
    resamples = resamples_of(challenger)
    dataset = challenger.params.get(vocabulary.DATASET_TAG)
    if champion_dataset != dataset:
        return Paired(None, 0, resamples, f"champion version {champion_version} was tested on other images "
                                          f"(dataset md5 {champion_dataset} vs {dataset})")
    ours, theirs = (image_stats(client, run_id, "test") for run_id in (challenger.run_id, champion_run_id))
    if ours is None or theirs is None:
        whose = "this run" if ours is None else f"champion version {champion_version}"
        return Paired(None, 0, resamples,
                      f"{whose} has no per-image test statistics: it was evaluated before they were recorded")
    try:
        test = paired_test(ours, theirs, TESTED.split(".", 1)[1], resamples, BOOTSTRAP_SEED)
    except ValueError as error:  # the same dataset md5, yet other images or labels in the two evaluations
        return Paired(None, 0, resamples, f"champion version {champion_version} cannot be paired with it: {error}")
    return Paired(test, len(ours.images), resamples)


def images_to_separate(images: float, gap: float, half_widths: float) -> float:
    """About how many images would make two 95 % intervals that overlap by now stop overlapping, if the gap
    between the two stayed as it is: an interval's width shrinks as 1/sqrt(images). inf for no gap."""
    if math.isnan(images) or images <= 0 or math.isnan(gap) or math.isnan(half_widths):
        return math.nan
    if gap <= 0:
        return math.inf
    return math.ceil(round(images * (half_widths / gap) ** 2, 6))  # rounded: 160.00000000000003 is 160
