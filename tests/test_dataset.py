"""The prepare stage's library: filtering, splitting, determinism and refusal of bad data."""

import hashlib
import shutil
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.conftest import jpeg_bytes, make_source, person_labels
from yolo_mlops.core.errors import PipelineError
from yolo_mlops.core.params import PrepareParams
from yolo_mlops.data.dataset import find_samples, parse_labels, prepare_dataset
from yolo_mlops.data.layout import COCO_NAMES, label_member_for, read_layout


def params(train: int = 4, val: int = 2, test: int = 2, seed: int = 0) -> PrepareParams:
    return PrepareParams(source="unused", classes=("person",), split="draw", train=train, val=val, test=test,
                         seed=seed)


def tree_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(folder).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def test_keeps_only_images_and_boxes_of_the_class(tmp_path: Path) -> None:
    source = make_source(tmp_path, person_labels(8, others=3) | {"000000000099": ""})
    statistics = prepare_dataset(source, params(), tmp_path / "out")
    out = tmp_path / "out"
    assert statistics["source_images_with_class"] == 8
    labels = sorted((out / "labels").rglob("*.txt"))
    assert len(labels) == 8 and len(list((out / "images").rglob("*.jpg"))) == 8
    for label in labels:
        assert label.read_text() == "0 0.5 0.5 0.2 0.4\n"  # the car box is gone, the person box kept as written
    assert [statistics[split]["images"] for split in ("train", "val", "test")] == [4, 2, 2]
    assert statistics["train"]["boxes"] == 4 and statistics["train"]["box_width"]["mean"] == 0.2
    data_yaml = yaml.safe_load((out / "data.yaml").read_text())
    assert data_yaml == {"train": "images/train", "val": "images/val", "test": "images/test", "names": {0: "person"}}


def test_split_is_deterministic_byte_for_byte_and_depends_on_the_seed(tmp_path: Path) -> None:
    source = make_source(tmp_path, person_labels(12))
    prepare_dataset(source, params(), tmp_path / "a")
    prepare_dataset(source, params(), tmp_path / "b")
    prepare_dataset(source, params(seed=1), tmp_path / "c")
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    names = {run: sorted(p.name for p in (tmp_path / run / "images" / "train").iterdir()) for run in "ac"}
    assert names["a"] != names["c"]


def test_zip_and_extracted_folder_give_the_same_dataset(tmp_path: Path) -> None:
    labels = person_labels(9)
    (tmp_path / "z").mkdir()
    zipped = make_source(tmp_path / "z", labels)
    folder = make_source(tmp_path / "f", labels, as_zip=False)
    prepare_dataset(zipped, params(), tmp_path / "from_zip")
    prepare_dataset(folder, params(), tmp_path / "from_folder")
    assert tree_digest(tmp_path / "from_zip") == tree_digest(tmp_path / "from_folder")


def test_too_few_images_of_the_class_is_refused_without_output(tmp_path: Path) -> None:
    source = make_source(tmp_path, person_labels(5))
    with pytest.raises(PipelineError, match="only 5 images contain the kept class.*= 8"):
        prepare_dataset(source, params(), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["coco128.zip"]  # no staging folder left behind


@pytest.mark.parametrize(("line", "message"), [
    ("0 0.5 0.5 0.2", "expected 'class x_center y_center width height'"),
    ("0 0.5 0.5 0.2 abc", "not numbers"),
    ("0 0.5 1.5 0.2 0.2", r"coordinates must be normalised to \[0, 1\]"),
    ("0 -0.1 0.5 0.2 0.2", r"coordinates must be normalised to \[0, 1\]"),
    ("80 0.5 0.5 0.2 0.2", r"unknown class id 80 \(the source's names have ids 0..79, from COCO's 80 classes"),
    ("-1 0.5 0.5 0.2 0.2", "unknown class id -1"),
])
def test_bad_label_lines_are_refused_with_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    labels = person_labels(10) | {"000000000005": f"0 0.5 0.5 0.2 0.4\n{line}\n"}
    source = make_source(tmp_path, labels)
    with pytest.raises(PipelineError, match=message) as error:
        prepare_dataset(source, params(), tmp_path / "out")
    assert "coco128/labels/train2017/000000000005.txt:2" in str(error.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("data", [b"\xff\xd8\xff\xe0 a truncated jpeg", b"no image format at all",
                                  jpeg_bytes(64, 48)[:300]])  # a valid header, cut short
def test_an_image_that_does_not_decode_is_named(tmp_path: Path, data: bytes) -> None:
    labels = person_labels(8)
    broken = {"000000000003": data}
    source = make_source(tmp_path, labels, images=broken)
    with pytest.raises(PipelineError, match=r"000000000003\.jpg: image does not decode") as error:
        prepare_dataset(source, params(), tmp_path / "out")
    assert "BytesIO" not in str(error.value) and " at 0x" not in str(error.value)  # the file only, no buffer
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("as_zip", [True, False])
def test_a_source_without_labels_says_so_not_to_lower_the_split_sizes(tmp_path: Path, as_zip: bool) -> None:
    source = make_source(tmp_path, person_labels(70), as_zip=as_zip)
    if as_zip:  # the same zip without its labels/ members
        stripped = tmp_path / "stripped.zip"
        with zipfile.ZipFile(source) as original, zipfile.ZipFile(stripped, "w") as archive:
            for member in original.namelist():
                if "/labels/" not in member:
                    archive.writestr(member, original.read(member))
        source = stripped
    else:
        shutil.rmtree(source / "labels")
    with pytest.raises(PipelineError) as error:
        prepare_dataset(source, params(), tmp_path / "out")
    message = str(error.value)
    assert f"prepare.source: {source} has 72 images but there is no labels/ folder" in message
    assert "lower prepare" not in message and not (tmp_path / "out").exists()
    (tmp_path / "labels_only").mkdir()
    empty_labels = make_source(tmp_path / "labels_only", {"000000000001": "0 0.5 0.5 0.2 0.4\n"}, as_zip=False)
    (empty_labels / "labels" / "train2017" / "000000000001.txt").rename(empty_labels / "labels" / "other.txt")
    with pytest.raises(PipelineError, match=f"{empty_labels} has 1 images but no image has a label file"):
        find_samples(read_layout(empty_labels), {0: 0})


def test_a_failed_run_keeps_the_previous_output(tmp_path: Path) -> None:
    good = make_source(tmp_path, person_labels(8))
    prepare_dataset(good, params(), tmp_path / "out")
    before = tree_digest(tmp_path / "out")
    with pytest.raises(PipelineError):
        prepare_dataset(good, params(train=40), tmp_path / "out")
    assert tree_digest(tmp_path / "out") == before


def test_yolo_label_paths_and_parsing() -> None:
    assert label_member_for("coco128/images/train2017/x.jpg") == "coco128/labels/train2017/x.txt"
    assert label_member_for("images/val/images.png") == "labels/val/images.txt"
    assert label_member_for("train/images/x.jpg") == "train/labels/x.txt"
    assert label_member_for("flat/x.png") == "flat/x.txt"  # no images/ folder: beside the image, as Ultralytics
    boxes = parse_labels("0 0.1 0.2 0.3 0.4\n\n56 0.5 0.5 1 1\n", "f.txt", dict(enumerate(COCO_NAMES)), "COCO")
    assert [(box.class_id, box.coordinates) for box in boxes] == [(0, ("0.1", "0.2", "0.3", "0.4")),
                                                                  (56, ("0.5", "0.5", "1", "1"))]


def test_a_source_without_images_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty" / "coco128").mkdir(parents=True)
    with pytest.raises(PipelineError, match="no images/ folder"):
        find_samples(read_layout(tmp_path / "empty"), {0: 0})
