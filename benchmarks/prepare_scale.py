"""Benchmark: the prepare stage on a dataset of 5,000 images and about 20,000 boxes, against a plain copy of the
same files (targets: at most 2x the copy's time; peak memory under 500 MB, whatever the dataset's size).

    python benchmarks/prepare_scale.py [--images 5000] [--classes 5] [--repeat 3]

Makes a dataset in the images/<split>/ + labels/<split>/ layout (640 x 480 JPEGs, gradients with grain, 4 boxes
an image on average, `classes` classes in classes.txt) in a temporary folder, then, in a fresh process each,
`repeat` times:
- the baseline: `shutil.copytree` of the source folder (every image and label file read and written once);
- `prepare_dataset` as the stage calls it (classes `all`, drawn 0.8 / 0.1 / 0.1).
Prints the medians of the wall time and the peak resident memory of each process (ru_maxrss), and the ratios."""

import argparse
import io
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

CHILD = """
import resource, shutil, sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
from yolo_mlops.core.params import PrepareParams
from yolo_mlops.data.dataset import prepare_dataset
source, target = Path(sys.argv[2]), Path(sys.argv[3])
started = time.perf_counter()  # after the imports, the same for both
if sys.argv[1] == "copy":
    shutil.copytree(source, target)
else:
    prepare_dataset(source, PrepareParams("bench", "all", "draw", 0.8, 0.1, 0.1, 0), target)
print(time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def make_dataset(root: Path, images: int, classes: int) -> tuple[int, int]:
    """The source: (images, boxes) written."""
    generator = random.Random(0)
    noise = []
    for index in range(16):  # a few distinct JPEGs, reused: making 5,000 would dominate the benchmark
        buffer = io.BytesIO()
        smooth = Image.radial_gradient("L").resize((640, 480)).rotate(index * 20)
        grain = Image.effect_noise((640, 480), 30 + index)
        channels = [Image.blend(smooth, grain, 0.1 + 0.1 * band) for band in range(3)]
        Image.merge("RGB", channels).save(buffer, format="JPEG", quality=90)  # photo-like: smooth, some grain
        noise.append(buffer.getvalue())
    root.mkdir(parents=True)
    (root / "classes.txt").write_text("".join(f"class_{index}\n" for index in range(classes)))
    boxes = 0
    for index in range(images):
        split = "train" if index % 10 < 8 else "val" if index % 10 == 8 else "test"
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        (root / "images" / split / f"{index:06d}.jpg").write_bytes(noise[index % len(noise)])
        count = generator.randint(1, 7)
        lines = [f"{generator.randrange(classes)} {generator.uniform(0.2, 0.8):.6f} {generator.uniform(0.2, 0.8):.6f} "
                 f"{generator.uniform(0.02, 0.3):.6f} {generator.uniform(0.02, 0.3):.6f}" for _ in range(count)]
        (root / "labels" / split / f"{index:06d}.txt").write_text("\n".join(lines) + "\n")
        boxes += count
    return images, boxes


def measure(kind: str, source: Path, target: Path) -> tuple[float, float]:
    """(seconds, peak MB) of one fresh process doing `kind`."""
    shutil.rmtree(target, ignore_errors=True)
    result = subprocess.run([sys.executable, "-c", CHILD.format(root=str(ROOT)), kind, str(source), str(target)],
                            capture_output=True, text=True, check=True)
    seconds, peak_kb = result.stdout.split()
    return float(seconds), int(peak_kb) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="prepare-bench-") as folder:
        source = Path(folder) / "source"
        started = time.perf_counter()
        images, boxes = make_dataset(source, args.images, args.classes)
        print(f"dataset: {images} images, {boxes} boxes, {args.classes} classes, "
              f"{sum(p.stat().st_size for p in source.rglob('*') if p.is_file()) / 1e6:.0f} MB "
              f"(made in {time.perf_counter() - started:.1f} s)")
        results: dict[str, list[tuple[float, float]]] = {"copy": [], "prepare": []}
        for _ in range(args.repeat):
            for kind in results:  # interleaved, so that a slower moment of the machine hits both
                results[kind].append(measure(kind, source, Path(folder) / kind))
    median = {kind: (statistics.median(s for s, _ in runs), statistics.median(m for _, m in runs))
              for kind, runs in results.items()}
    for kind, (seconds, peak) in median.items():
        print(f"{kind:8s} {seconds:7.2f} s   peak {peak:6.0f} MB   (median of {args.repeat})")
    time_ratio = median["prepare"][0] / median["copy"][0]
    print(f"prepare / copy: {time_ratio:.2f}x the time (target <= 2x), peak memory {median['prepare'][1]:.0f} MB "
          "(target < 500 MB)")


if __name__ == "__main__":
    main()
