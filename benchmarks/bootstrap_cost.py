"""Benchmark: what the intervals over the test images cost (the bootstrap of yolo_mlops/yolo/uncertainty.py).

In one script on one machine: a fresh clone of this project trains `yolov8n.yaml` from scratch (1 epoch,
imgsz 320, the 40/10/10 person set of COCO128), then, alternating, rounds of
  (a) one evaluation of the 10-image test split as Ultralytics runs it: `model.val(split="test")`, the baseline;
  (b) the same call with the project's recording validator (which keeps each image's statistics);
  (c) the bootstrap of those statistics at `--resamples` (1000, the default of evaluate.bootstrap);
  (d) one evaluation of the 40-image train split, for the cost of one more image in an evaluation;
then the bootstrap of synthetic statistics of 5,000 images, shaped like a detector's at conf 0.001 (3 labelled
boxes an image on average, `--predictions` predictions an image (50, and 300: Ultralytics' max_det, what an
untrained or a many-class model reaches at conf 0.001), most of them low-confidence false positives),
against an evaluation of 5,000 images estimated from (a) and (d) (no 5,000-image set here).
Prints the machine, each timing, the medians and the ratios against the baseline; targets: (c) at most 10 % of
(a) at 10 images, and under 30 s at 5,000 images.

    .venv/bin/python benchmarks/bootstrap_cost.py [--rounds 3] [--resamples 1000] [--coco128 PATH]
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from benchmarks.pipeline_overhead import machine, set_params  # noqa: E402
from yolo_mlops.yolo.uncertainty import BOOTSTRAP_SEED, ImageStats, collect, replicates  # noqa: E402

TRAIN = {"model": "yolov8n.yaml", "epochs": 1, "imgsz": 320, "device": "cpu"}
LARGE_IMAGES = 5000


def synthetic(images: int, predictions: int, seed: int = 0) -> ImageStats:
    """Per-image statistics of `images` images: Poisson(3) labelled boxes, Poisson(`predictions`) predictions,
    the first ones matching the labels at IoU 0.45 to 0.95 with high confidence, the rest false positives."""
    rng = np.random.default_rng(seed)
    tp, conf, pred_cls, target_cls = [], [], [], []
    for _ in range(images):
        labels, count = int(rng.poisson(3)), int(rng.poisson(predictions))
        matched = min(labels, count)
        iou = np.zeros(count)
        iou[:matched] = rng.uniform(0.45, 0.95, matched)
        score = rng.random(count) ** 3 * 0.5
        score[:matched] = rng.uniform(0.3, 1.0, matched)
        tp.append(iou[:, None] >= np.linspace(0.5, 0.95, 10)[None, :])
        conf.append(score.astype(np.float32))
        pred_cls.append(np.zeros(count))
        target_cls.append(np.zeros(labels))
    return collect([f"{i:06d}.jpg" for i in range(images)], ["person"], tp, conf, pred_cls, target_cls)


def seconds(action) -> tuple[float, object]:
    start = time.perf_counter()
    result = action()
    return time.perf_counter() - start, result


def trained_clone(folder: Path, coco128: str) -> Path:
    """A clone of this project's last commit, set to TRAIN, with its prepare and train stages run."""
    project = folder / "project"
    subprocess.run(["git", "clone", "-q", str(PROJECT), str(project)], check=True)
    set_params(project, prepare__source=str(Path(coco128).resolve()), train__workers=0,
               **{f"train__{key}": value for key, value in TRAIN.items()})
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    subprocess.run(["dvc", "repro", "train"], cwd=project, env=env, check=True, stdout=subprocess.DEVNULL)
    return project


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--predictions", type=int, nargs="+", default=[50, 300],
                        help="mean predictions an image at 5,000 images")
    parser.add_argument("--coco128", default=str(PROJECT.parent / "shared" / "data" / "coco128.zip"))
    args = parser.parse_args()
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory(prefix="bench-") as scratch:
        project = trained_clone(Path(scratch), args.coco128)
        os.chdir(project)
        from yolo_mlops.core.paths import BEST_WEIGHTS, DATASET_DIR
        from yolo_mlops.yolo.dataset import stage_dataset
        from yolo_mlops.yolo.evaluate import recording_validator
        from yolo_mlops.yolo.model import ultralytics

        data = stage_dataset(DATASET_DIR, Path(scratch) / "data")
        model = ultralytics().YOLO(str(BEST_WEIGHTS))
        options = {"data": str(data), "split": "test", "imgsz": TRAIN["imgsz"], "batch": 16, "conf": 0.001,
                   "iou": 0.7, "device": "cpu", "plots": True, "project": scratch, "exist_ok": True,
                   "verbose": False}
        model.val(**options, name="warm-up")  # the first call builds the label cache and loads the model
        plain, recording, bootstrap, larger = [], [], [], []
        for _ in range(args.rounds):
            plain.append(seconds(lambda: model.val(**options, name="plain"))[0])
            elapsed, results = seconds(lambda: model.val(validator=recording_validator(), **options, name="kept"))
            recording.append(elapsed)
            stats = results.image_stats
            bootstrap.append(seconds(lambda: replicates(stats, args.resamples, BOOTSTRAP_SEED))[0])  # noqa: B023
            larger.append(seconds(lambda: model.val(**{**options, "split": "train"}, name="train"))[0])
        os.chdir(PROJECT)  # out of the clone before it is deleted
    print(f"10 test images: {len(stats.conf)} predictions, {int(stats.labels.sum())} labelled boxes; "
          f"{args.rounds} alternating rounds")
    base = statistics.median(plain)
    for name, times in (("model.val (baseline)", plain), ("model.val, recording validator", recording),
                        (f"bootstrap, {args.resamples} resamples", bootstrap)):
        print(f"  {name}: median {statistics.median(times):.3f} s of {[round(t, 3) for t in times]}, "
              f"ratio {statistics.median(times) / base:.3f}")
    print(f"  bootstrap / evaluation: {statistics.median(bootstrap) / base:.3f} (target <= 0.10)")
    per_image = (statistics.median(larger) - base) / 30  # the train split's 40 images against the test split's 10
    estimate = base + per_image * (LARGE_IMAGES - len(stats.images))
    print(f"  model.val of the 40-image train split: median {statistics.median(larger):.3f} s: "
          f"{per_image:.3f} s a further image")
    for predictions in args.predictions:
        large = synthetic(LARGE_IMAGES, predictions)
        times = [seconds(lambda: replicates(large, args.resamples, BOOTSTRAP_SEED))[0]  # noqa: B023
                 for _ in range(min(args.rounds, 3))]
        print(f"{LARGE_IMAGES} synthetic images, {predictions} predictions an image: {len(large.conf)} predictions, "
              f"{int(large.labels.sum())} labelled boxes")
        print(f"  bootstrap, {args.resamples} resamples: median {statistics.median(times):.2f} s of "
              f"{[round(t, 2) for t in times]} (target < 30 s); an evaluation of {LARGE_IMAGES} images, estimated: "
              f"{estimate:.0f} s, ratio {statistics.median(times) / estimate:.4f}")


if __name__ == "__main__":
    main()
