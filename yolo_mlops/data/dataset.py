"""Cut the one-class dataset from COCO128: filter, validate, split, write in YOLO layout."""

import io
import random
import statistics
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from PIL import Image, UnidentifiedImageError

from yolo_mlops.core.atomic import atomic_dir
from yolo_mlops.core.errors import PipelineError
from yolo_mlops.core.paths import DATA_YAML
from yolo_mlops.core.params import PrepareParams
from yolo_mlops.core.vocabulary import SPLITS

COCO_CLASS_COUNT = 80
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SMALL_AREA_PX, MEDIUM_AREA_PX = 32**2, 96**2  # COCO's object size boundaries


@dataclass(frozen=True)
class Box:
    class_id: int
    coordinates: tuple[str, str, str, str]  # x_center y_center width height, as written

    @property
    def width(self) -> float:
        return float(self.coordinates[2])

    @property
    def height(self) -> float:
        return float(self.coordinates[3])


@dataclass(frozen=True)
class Sample:
    """One source image and the boxes of the kept class."""

    name: str
    image_member: str
    boxes: tuple[Box, ...]


class SourceTree:
    """Read-only view of a COCO128 zip or extracted folder, as `relative/posix/path` → bytes."""

    def __init__(self, location: Path):
        self.location = location
        if location.is_dir():
            files = [path for path in location.rglob("*") if path.is_file()]
            self.members = {path.relative_to(location).as_posix(): path for path in files}
            self._read: Callable[[str], bytes] = lambda member: self.members[member].read_bytes()
        else:
            archive = zipfile.ZipFile(location)
            self.members = {name: name for name in archive.namelist() if not name.endswith("/")}
            self._read = archive.read

    def read(self, member: str) -> bytes:
        return self._read(member)

    def describe(self, member: str) -> str:
        """How to name a member in a message: the file path, or zip!member."""
        return str(self.location / member) if self.location.is_dir() else f"{self.location}!{member}"


def label_member_for(image_member: str) -> str:
    """YOLO convention: .../images/<split>/x.jpg is labelled by .../labels/<split>/x.txt."""
    parts = list(PurePosixPath(image_member).with_suffix(".txt").parts)
    index = len(parts) - 1 - parts[::-1].index("images")
    parts[index] = "labels"
    return PurePosixPath(*parts).as_posix()


def parse_labels(text: str, where: str) -> list[Box]:
    """Parse YOLO label lines; a malformed line is refused with `where:line`."""
    boxes = []
    for number, line in enumerate(text.splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        location = f"{where}:{number}"
        if len(tokens) != 5:
            raise PipelineError(f"{location}: expected 'class x_center y_center width height', got {line.strip()!r}")
        try:
            class_id, values = int(tokens[0]), [float(token) for token in tokens[1:]]
        except ValueError:
            raise PipelineError(f"{location}: not numbers: {line.strip()!r}") from None
        if not 0 <= class_id < COCO_CLASS_COUNT:
            raise PipelineError(f"{location}: unknown class id {class_id} (COCO has 0..{COCO_CLASS_COUNT - 1})")
        if not all(0.0 <= value <= 1.0 for value in values):
            raise PipelineError(f"{location}: coordinates must be normalised to [0, 1], got {line.strip()!r}")
        boxes.append(Box(class_id, (tokens[1], tokens[2], tokens[3], tokens[4])))
    return boxes


def find_samples(tree: SourceTree, class_id: int) -> list[Sample]:
    """Every image with at least one box of `class_id`, keeping only those boxes, sorted by name.

    Every label file is validated, including those of images that are not kept."""
    images = sorted(
        member for member in tree.members
        if member.lower().endswith(IMAGE_SUFFIXES) and "images" in PurePosixPath(member).parts[:-1]
    )
    if not images:
        raise PipelineError(f"prepare.source: no images/ folder with images in {tree.location}")
    labelled = [image for image in images if label_member_for(image) in tree.members]
    if not labelled:
        layout = "no image has a label file" if any(
            "labels" in PurePosixPath(member).parts[:-1] for member in tree.members) else "there is no labels/ folder"
        raise PipelineError(
            f"prepare.source: {tree.location} has {len(images)} images but {layout} (YOLO labels: "
            f"labels/<split>/<image>.txt beside images/<split>/). Give the whole COCO128, labels included"
        )
    samples = []
    for image in labelled:  # COCO128 has images without any object, and so without a label file
        label = label_member_for(image)
        text = tree.read(label).decode("utf-8", errors="replace")
        kept = tuple(box for box in parse_labels(text, tree.describe(label)) if box.class_id == class_id)
        if kept:
            samples.append(Sample(PurePosixPath(image).stem, image, kept))
    names = [sample.name for sample in samples]
    if len(set(names)) != len(names):
        raise PipelineError(f"prepare.source: image names are not unique in {tree.location}")
    return samples


def split_samples(samples: list[Sample], sizes: dict[str, int], seed: int) -> dict[str, list[Sample]]:
    """Shuffle the name-sorted samples with `seed` and cut them into the requested split sizes."""
    wanted = sum(sizes.values())
    if len(samples) < wanted:
        raise PipelineError(
            f"prepare: only {len(samples)} images contain the kept class, but train + val + test = {wanted} "
            "were requested; lower prepare.train / prepare.val / prepare.test"
        )
    order = sorted(samples, key=lambda sample: sample.name)
    random.Random(seed).shuffle(order)
    splits, start = {}, 0
    for split in SPLITS:
        splits[split] = sorted(order[start:start + sizes[split]], key=lambda sample: sample.name)
        start += sizes[split]
    return splits


def decode_image(data: bytes, where: str) -> Image.Image:
    """Fully decode an image; refuse one that does not decode, naming it."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except UnidentifiedImageError:  # its message names the in-memory buffer, not the file
        raise PipelineError(f"{where}: image does not decode (not a format Pillow recognises)") from None
    except (OSError, SyntaxError) as error:
        raise PipelineError(f"{where}: image does not decode ({error})") from None
    return image


def _summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {"mean": 0.0, "median": 0.0, "min": 0.0, "max": 0.0}
    return {
        "mean": round(statistics.fmean(values), 6),
        "median": round(statistics.median(values), 6),
        "min": round(min(values), 6),
        "max": round(max(values), 6),
    }


def split_statistics(samples: list[Sample], image_sizes: dict[str, tuple[int, int]]) -> dict[str, Any]:
    """Image and box counts, box size statistics and COCO size classes for one split."""
    boxes = [(box, image_sizes[sample.name]) for sample in samples for box in sample.boxes]
    areas_px = [box.width * width * box.height * height for box, (width, height) in boxes]
    return {
        "images": len(samples),
        "boxes": len(boxes),
        "boxes_per_image": round(len(boxes) / len(samples), 4) if samples else 0.0,
        "box_width": _summary([box.width for box, _ in boxes]),
        "box_height": _summary([box.height for box, _ in boxes]),
        "small_boxes": sum(area < SMALL_AREA_PX for area in areas_px),
        "medium_boxes": sum(SMALL_AREA_PX <= area < MEDIUM_AREA_PX for area in areas_px),
        "large_boxes": sum(area >= MEDIUM_AREA_PX for area in areas_px),
    }


def prepare_dataset(source: Path, params: PrepareParams, output_dir: Path) -> dict[str, Any]:
    """Write the dataset in YOLO layout to `output_dir` (atomically) and return its statistics.

    The same source and params give byte-identical files."""
    tree = SourceTree(source)
    candidates = find_samples(tree, params.class_id)
    splits = split_samples(candidates, params.split_sizes, params.seed)
    image_sizes: dict[str, tuple[int, int]] = {}
    with atomic_dir(output_dir) as staging:
        for split, samples in splits.items():
            (staging / "images" / split).mkdir(parents=True)
            (staging / "labels" / split).mkdir(parents=True)
            for sample in samples:
                data = tree.read(sample.image_member)
                image_sizes[sample.name] = decode_image(data, tree.describe(sample.image_member)).size
                suffix = PurePosixPath(sample.image_member).suffix.lower()
                (staging / "images" / split / f"{sample.name}{suffix}").write_bytes(data)
                lines = "".join(f"0 {' '.join(box.coordinates)}\n" for box in sample.boxes)
                (staging / "labels" / split / f"{sample.name}.txt").write_text(lines, encoding="utf-8")
        data_yaml = {split: f"images/{split}" for split in SPLITS} | {"names": {0: params.class_name}}
        (staging / DATA_YAML.name).write_text(
            "# Paths are relative to this file's folder (no `path:` key), so it works anywhere.\n"
            + yaml.safe_dump(data_yaml, sort_keys=False),
            encoding="utf-8",
        )
    statistics_by_split = {split: split_statistics(samples, image_sizes) for split, samples in splits.items()}
    return {"source_images_with_class": len(candidates), **statistics_by_split}
