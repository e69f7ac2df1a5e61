"""Cut the dataset from a detection source: keep the classes asked for, validate, split, write in YOLO layout,
one image at a time."""

import io
import logging
import random
import statistics
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from PIL import Image, UnidentifiedImageError

from yolo_mlops.core.atomic import atomic_dir
from yolo_mlops.core.errors import PipelineError
from yolo_mlops.core.params import ALL_CLASSES, PrepareParams
from yolo_mlops.core.paths import DATA_YAML
from yolo_mlops.core.vocabulary import CLASSES_KEY, SPLITS
from yolo_mlops.data.layout import Layout, SourceTree, label_member_for, read_layout

log = logging.getLogger(__name__)
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
    """One source image and its boxes of the kept classes, with the output's class ids."""

    name: str
    image_member: str
    boxes: tuple[Box, ...]


def parse_labels(text: str, where: str, names: dict[int, str], names_from: str) -> list[Box]:
    """Parse YOLO label lines; a malformed line or an id outside the source's names is refused with `where:line`."""
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
        if class_id not in names:
            raise PipelineError(f"{location}: unknown class id {class_id} (the source's names have ids "
                                f"{min(names)}..{max(names)}, from {names_from})")
        if not all(0.0 <= value <= 1.0 for value in values):
            raise PipelineError(f"{location}: coordinates must be normalised to [0, 1], got {line.strip()!r}")
        boxes.append(Box(class_id, (tokens[1], tokens[2], tokens[3], tokens[4])))
    return boxes


def kept_classes(layout: Layout, classes: tuple[str, ...] | str) -> dict[int, int]:
    """Source class id → output id (0..k-1, in `prepare.classes`' order); an unknown name is refused, listing the
    source's names."""
    if classes == ALL_CLASSES:
        return {source_id: index for index, source_id in enumerate(layout.names)}
    by_name = {name: source_id for source_id, name in reversed(layout.names.items())}
    unknown = [name for name in classes if name not in by_name]
    if unknown:
        raise PipelineError(f"prepare.classes: unknown class(es) {', '.join(map(repr, unknown))}; the source's names "
                            f"({layout.names_from}) are: {', '.join(layout.names.values())}")
    return {by_name[name]: index for index, name in enumerate(classes)}


def find_samples(layout: Layout, kept: dict[int, int]) -> dict[str, list[Sample]]:
    """Per source split, every image with at least one box of a kept class, keeping only those boxes (with the
    output's ids), sorted by member. Every label file is validated, including those of images that are not kept."""
    tree = layout.tree
    if not any(layout.splits.values()):
        raise PipelineError(f"prepare.source: no images/ folder with images in {tree.location}")
    images = [image for members in layout.splits.values() for image in members]
    if not any(label_member_for(image) in tree.members for image in images):
        labels_folder = any("labels" in PurePosixPath(member).parts[:-1] for member in tree.members)
        reason = "no image has a label file" if labels_folder else "there is no labels/ folder"
        raise PipelineError(
            f"prepare.source: {tree.location} has {len(images)} images but {reason} (YOLO labels: "
            f"labels/<split>/<image>.txt beside images/<split>/). Give the whole dataset, labels included"
        )
    found: dict[str, list[Sample]] = {}
    for split, members in layout.splits.items():
        found[split] = []
        for image in members:  # images without any object have no label file (COCO128 has some)
            label = label_member_for(image)
            if label not in tree.members:
                continue
            text = tree.read(label).decode("utf-8", errors="replace")
            boxes = parse_labels(text, tree.describe(label), layout.names, layout.names_from)
            kept_boxes = tuple(Box(kept[box.class_id], box.coordinates) for box in boxes if box.class_id in kept)
            if kept_boxes:
                found[split].append(Sample(PurePosixPath(image).stem, image, kept_boxes))
    return found


def _unique(samples: list[Sample], tree: SourceTree, where: str) -> None:
    seen: dict[str, str] = {}
    for sample in samples:
        if sample.name in seen:
            raise PipelineError(f"prepare.source: image names are not unique in {where}: "
                                f"{tree.describe(seen[sample.name])} and {tree.describe(sample.image_member)}")
        seen[sample.name] = sample.image_member


def _sizes(params: PrepareParams, available: int) -> dict[str, int]:
    """The split sizes: prepare's counts, or its fractions of `available` images."""
    if not params.fractions:
        return dict(params.split_sizes)
    sizes = {split: round(available * params.split_sizes[split]) for split in ("val", "test")}
    sizes["train"] = min(round(available * params.train), available - sizes["val"] - sizes["test"])
    empty = [split for split, size in sizes.items() if size < 1]
    if empty:
        raise PipelineError(f"prepare.{empty[0]}: {params.split_sizes[empty[0]]} of {available} images is no image; "
                            "raise it or give counts")
    return {split: sizes[split] for split in SPLITS}


def _draw(samples: list[Sample], sizes: dict[str, int], seed: int, what: str) -> dict[str, list[Sample]]:
    """Shuffle the name-sorted samples with `seed` and cut them into the split sizes (in SPLITS order)."""
    wanted = sum(sizes.values())
    if len(samples) < wanted:
        asked = " + ".join(sizes)
        raise PipelineError(
            f"prepare: only {len(samples)} images contain the kept classes{what}, but {asked} = {wanted} "
            f"were requested; lower {' / '.join(f'prepare.{split}' for split in sizes)}"
        )
    order = sorted(samples, key=lambda sample: sample.name)
    random.Random(seed).shuffle(order)
    splits, start = {}, 0
    for split, size in sizes.items():
        splits[split] = sorted(order[start:start + size], key=lambda sample: sample.name)
        start += size
    return splits


def split_samples(found: dict[str, list[Sample]], params: PrepareParams, tree: SourceTree) -> dict[str, list[Sample]]:
    """The output's splits: drawn from every image of the source (`split: draw`), or the source's own (`split:
    keep`), a missing val or test split drawn from its train split, saying so."""
    if params.split == "draw":
        pool = [sample for samples in found.values() for sample in samples]
        _unique(pool, tree, str(tree.location))
        return _draw(pool, _sizes(params, len(pool)), params.seed, "")
    if not found.get("train"):
        raise PipelineError(f"prepare.split: keep needs a train split with the kept classes; {tree.location} has "
                            f"{', '.join(f'{split}: {len(samples)}' for split, samples in found.items()) or 'none'}")
    missing = [split for split in ("val", "test") if split not in found]
    splits = {split: list(samples) for split, samples in found.items()}
    if missing:
        sizes = _sizes(params, sum(len(samples) for samples in found.values()))
        drawn = _draw(splits["train"], {split: sizes[split] for split in missing} | {"train": 0}, params.seed,
                      " in the source's train split")
        taken = {sample.image_member for split in missing for sample in drawn[split]}
        splits |= {split: drawn[split] for split in missing}
        splits["train"] = [sample for sample in splits["train"] if sample.image_member not in taken]
        log.warning("prepare: the source has no %s split; drew %s from its train split (prepare.seed %d)",
                    " or ".join(missing), ", ".join(f"{len(drawn[split])} {split} images" for split in missing),
                    params.seed)
    for split in SPLITS:
        _unique(splits[split], tree, f"its {split} split")
    return {split: splits[split] for split in SPLITS}


def check_classes(splits: dict[str, list[Sample]], names: list[str]) -> None:
    """Every kept class has a box in val and in test: a class without one cannot be evaluated."""
    for split in ("val", "test"):
        present = {box.class_id for sample in splits[split] for box in sample.boxes}
        for class_id, name in enumerate(names):
            if class_id not in present:
                raise PipelineError(
                    f"prepare.classes: class {name!r} has no box left in {split} after the split "
                    f"({len(splits[split])} images); give it more images, raise prepare.{split}, try another "
                    "prepare.seed or leave it out of prepare.classes"
                )


def decode_image(data: bytes, where: str) -> tuple[int, int]:
    """The size of an image, checked as Ultralytics checks a dataset's images (its header parsed and verified, a
    JPEG's end marker present) without decoding its pixels; one that fails is refused, naming it."""
    try:
        image = Image.open(io.BytesIO(data))
        size, kind = image.size, image.format
        image.verify()
    # Its message names the in-memory buffer, not the file. ImportError: where Ultralytics is imported, its
    # patched Image.open retries an unidentified image with the pi-heif plugin, which may be missing.
    except (UnidentifiedImageError, ImportError):
        raise PipelineError(f"{where}: image does not decode (not a format Pillow recognises)") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise PipelineError(f"{where}: image does not decode ({error})") from None
    if kind == "JPEG" and not data.rstrip(b"\0").endswith(b"\xff\xd9"):
        raise PipelineError(f"{where}: image does not decode (a truncated JPEG: no end-of-image marker)")
    if min(size) < 1:
        raise PipelineError(f"{where}: image does not decode (size {size[0]}x{size[1]})")
    return size


def _summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {"mean": 0.0, "median": 0.0, "min": 0.0, "max": 0.0}
    return {
        "mean": round(statistics.fmean(values), 6),
        "median": round(statistics.median(values), 6),
        "min": round(min(values), 6),
        "max": round(max(values), 6),
    }


def _size_classes(boxes: list[tuple[Box, tuple[int, int]]]) -> dict[str, int]:
    """COCO's small / medium / large boxes, by area in pixels."""
    areas_px = [box.width * width * box.height * height for box, (width, height) in boxes]
    return {
        "small_boxes": sum(area < SMALL_AREA_PX for area in areas_px),
        "medium_boxes": sum(SMALL_AREA_PX <= area < MEDIUM_AREA_PX for area in areas_px),
        "large_boxes": sum(area >= MEDIUM_AREA_PX for area in areas_px),
    }


def split_statistics(samples: list[Sample], image_sizes: dict[str, tuple[int, int]],
                     names: list[str]) -> dict[str, Any]:
    """Image and box counts, box size statistics and COCO size classes for one split, all classes and per class."""
    boxes = [(box, image_sizes[sample.name]) for sample in samples for box in sample.boxes]
    per_class = {}
    for class_id, name in enumerate(names):
        own = [(box, size) for box, size in boxes if box.class_id == class_id]
        images = sum(any(box.class_id == class_id for box in sample.boxes) for sample in samples)
        per_class[name] = {"images": images, "boxes": len(own), **_size_classes(own)}
    return {
        "images": len(samples),
        "boxes": len(boxes),
        "boxes_per_image": round(len(boxes) / len(samples), 4) if samples else 0.0,
        "box_width": _summary([box.width for box, _ in boxes]),
        "box_height": _summary([box.height for box, _ in boxes]),
        **_size_classes(boxes),
        CLASSES_KEY: per_class,
    }


def prepare_dataset(source: Path, params: PrepareParams, output_dir: Path) -> dict[str, Any]:
    """Write the dataset in YOLO layout to `output_dir` (atomically, one image in memory at a time) and return its
    statistics. The same source and params give byte-identical files."""
    layout = read_layout(source)
    kept = kept_classes(layout, params.classes)
    names = [layout.names[source_id] for source_id in sorted(kept, key=kept.__getitem__)]
    found = find_samples(layout, kept)
    splits = split_samples(found, params, layout.tree)
    check_classes(splits, names)
    image_sizes: dict[str, tuple[int, int]] = {}
    with atomic_dir(output_dir) as staging:
        for split, samples in splits.items():
            (staging / "images" / split).mkdir(parents=True)
            (staging / "labels" / split).mkdir(parents=True)
            for sample in samples:
                data = layout.tree.read(sample.image_member)
                image_sizes[sample.name] = decode_image(data, layout.tree.describe(sample.image_member))
                suffix = PurePosixPath(sample.image_member).suffix.lower()
                (staging / "images" / split / f"{sample.name}{suffix}").write_bytes(data)
                lines = "".join(f"{box.class_id} {' '.join(box.coordinates)}\n" for box in sample.boxes)
                (staging / "labels" / split / f"{sample.name}.txt").write_text(lines, encoding="utf-8")
        data_yaml = {split: f"images/{split}" for split in SPLITS} | {"names": dict(enumerate(names))}
        (staging / DATA_YAML.name).write_text(
            "# Paths are relative to this file's folder (no `path:` key), so it works anywhere.\n"
            + yaml.safe_dump(data_yaml, sort_keys=False),
            encoding="utf-8",
        )
    statistics_by_split = {split: split_statistics(samples, image_sizes, names) for split, samples in splits.items()}
    candidates = sum(len(samples) for samples in found.values())
    return {"source_images_with_class": candidates, **statistics_by_split}
