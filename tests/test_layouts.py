"""The user's own detection data through the prepare stage: every layout Ultralytics reads, prepare.classes,
the splits kept or drawn, each refusal, and sources whose members or links leave them."""

import logging
import os
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.conftest import (
    FRUIT,
    FRUIT_LAYOUTS,
    FRUIT_SPLITS,
    PROJECT_ROOT,
    jpeg_bytes,
    make_dataset,
    make_source,
    person_labels,
    project_env,
)
from tests.test_dataset import tree_digest
from yolo_mlops.core.errors import PipelineError
from yolo_mlops.core.params import PrepareParams
from yolo_mlops.data.dataset import prepare_dataset


def params(classes: tuple[str, ...] | str = ("cherry", "apple"), split: str = "keep", train: int | float = 4,
           val: int | float = 2, test: int | float = 2, seed: int = 0) -> PrepareParams:
    return PrepareParams(source="unused", classes=classes, split=split, train=train, val=val, test=test, seed=seed)


def labels_of(out: Path, split: str) -> dict[str, str]:
    return {path.stem: path.read_text() for path in sorted((out / "labels" / split).iterdir())}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The dataset prepared from the images_split layout, split kept, classes [cherry, apple]."""
    root = tmp_path_factory.mktemp("reference")
    statistics = prepare_dataset(make_dataset(root, "images_split"), params(), root / "out")
    return root / "out", statistics


@pytest.mark.parametrize("layout", FRUIT_LAYOUTS)
def test_every_layout_gives_the_same_dataset_with_the_kept_classes_remapped(
        tmp_path: Path, layout: str, reference: tuple[Path, dict]) -> None:
    expected, expected_statistics = reference
    statistics = prepare_dataset(make_dataset(tmp_path, layout), params(), tmp_path / "out")
    assert tree_digest(tmp_path / "out") == tree_digest(expected)  # byte for byte, whatever the layout
    assert statistics == expected_statistics
    data_yaml = yaml.safe_load((tmp_path / "out" / "data.yaml").read_text())
    assert data_yaml == {"train": "images/train", "val": "images/val", "test": "images/test",
                         "names": {0: "cherry", 1: "apple"}}
    assert [statistics[split]["images"] for split in FRUIT_SPLITS] == list(FRUIT_SPLITS.values())  # its own splits
    assert sorted(labels_of(tmp_path / "out", "val")) == [f"val_{index:03d}" for index in range(6)]
    # val_000 has apple (0 → 1) and banana (dropped); val_001 banana and cherry (2 → 0); val_002 cherry and apple
    val = labels_of(tmp_path / "out", "val")
    assert val["val_000"] == "1 0.3 0.3 0.2 0.3\n" and val["val_001"] == "0 0.7 0.6 0.25 0.2\n"
    assert val["val_002"] == "0 0.3 0.3 0.2 0.3\n1 0.7 0.6 0.25 0.2\n"
    assert statistics["val"]["classes"]["cherry"] == {"images": 4, "boxes": 4, "small_boxes": 4, "medium_boxes": 0,
                                                      "large_boxes": 0}
    assert set(statistics["test"]["classes"]) == {"cherry", "apple"} and statistics["val"]["boxes"] == 8


def test_splits_drawn_by_fractions_or_counts_with_every_class(tmp_path: Path) -> None:
    source = make_dataset(tmp_path, "split_images")
    by_fraction = prepare_dataset(source, params("all", "draw", 0.5, 0.25, 0.25), tmp_path / "fractions")
    assert [by_fraction[split]["images"] for split in ("train", "val", "test")] == [10, 5, 5]  # of 21 images
    assert yaml.safe_load((tmp_path / "fractions" / "data.yaml").read_text())["names"] == dict(enumerate(FRUIT))
    by_count = prepare_dataset(source, params("all", "draw", 12, 4, 5, seed=3), tmp_path / "counts")
    assert [by_count[split]["images"] for split in ("train", "val", "test")] == [12, 4, 5]
    drawn = {path.name for path in (tmp_path / "counts" / "images" / "val").iterdir()}
    assert not drawn <= {f"val_{index:03d}.jpg" for index in range(6)}  # new splits, not the source's val


def test_a_source_without_a_test_split_gets_one_drawn_from_train_and_says_so(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    source = make_dataset(tmp_path, "data_yaml")
    data = yaml.safe_load(source.read_text())
    del data["test"]
    source.write_text(yaml.safe_dump(data))
    with caplog.at_level(logging.WARNING, logger="yolo_mlops"):
        statistics = prepare_dataset(source, params(test=3), tmp_path / "out")
    assert "the source has no test split; drew 3 test images from its train split (prepare.seed 0)" in caplog.text
    assert [statistics[split]["images"] for split in ("train", "val", "test")] == [6, 6, 3]
    test, train = set(labels_of(tmp_path / "out", "test")), set(labels_of(tmp_path / "out", "train"))
    assert all(name.startswith("train_") for name in test) and not test & train


def refused(source: Path, prepare: PrepareParams, out: Path) -> str:
    with pytest.raises(PipelineError) as error:
        prepare_dataset(source, prepare, out)
    assert not out.exists() and not list(out.parent.glob(f".{out.name}.*"))  # nothing half-written
    return str(error.value)


def test_a_label_id_outside_the_source_names_is_refused_with_file_and_line(tmp_path: Path) -> None:
    source = make_dataset(tmp_path, "images_split")
    label = source / "labels" / "test" / "test_004.txt"
    label.write_text(label.read_text() + "7 0.5 0.5 0.1 0.1\n")
    message = refused(source, params(), tmp_path / "out")
    assert message.startswith(f"{label}:3: unknown class id 7 (the source's names have ids 0..2, from "
                              f"{source / 'classes.txt'})")


def test_an_unknown_class_is_refused_listing_the_source_names(tmp_path: Path) -> None:
    message = refused(make_dataset(tmp_path, "zip"), params(("apple", "kiwi")), tmp_path / "out")
    assert message.startswith("prepare.classes: unknown class(es) 'kiwi'; the source's names (")
    assert message.endswith("fruit/data.yaml) are: apple, banana, cherry")


def test_a_kept_class_without_a_box_in_val_or_test_is_refused(tmp_path: Path) -> None:
    source = make_dataset(tmp_path, "images_split", extra_train_class=True)
    message = refused(source, params(("apple", "durian")), tmp_path / "out")
    assert message.startswith("prepare.classes: class 'durian' has no box left in val after the split (4 images)")
    assert refused(source, params("all"), tmp_path / "out").startswith("prepare.classes: class 'durian' has no box")


def test_a_data_yaml_whose_split_folder_is_missing_is_refused_with_file_line_and_key(tmp_path: Path) -> None:
    source = make_dataset(tmp_path, "data_yaml")
    shutil.rmtree(source.parent / "test")
    line = next(number for number, text in enumerate(source.read_text().splitlines(), 1) if text.startswith("test:"))
    message = refused(source, params(), tmp_path / "out")
    assert message.startswith(f"{source}:{line}: test: ../test/images does not exist (resolved to ")


def test_two_layouts_mixed_in_one_source_are_refused(tmp_path: Path) -> None:
    source = make_dataset(tmp_path, "images_split")
    (source / "extra" / "train" / "images").mkdir(parents=True)
    (source / "extra" / "train" / "images" / "x.jpg").write_bytes(jpeg_bytes())
    message = refused(source, params(), tmp_path / "out")
    assert message == (f"prepare.source: {source} mixes two layouts: <split>/images/ + <split>/labels/ (e.g. "
                       "extra/train/images/x.jpg) and images/<split>/ + labels/<split>/ (e.g. images/test/test_000.jpg)"
                       "; keep one")


HOSTILE_MEMBERS = {
    "../../x.txt": "a '..' component in its path",
    "/tmp/x.txt": "an absolute path",
    "coco128/images/train2017/../../../../../tmp/x.jpg": "a '..' component in its path",
}


def hostile_zip(tmp_path: Path, member: str, link: str | None = None) -> Path:
    """A COCO128-shaped zip with one hostile member (as written in the archive, which zipfile allows); `link`
    makes it a symbolic link to that target."""
    source = make_source(tmp_path, person_labels(8))
    with zipfile.ZipFile(source, "a") as archive:
        info = zipfile.ZipInfo(member)
        if link is not None:
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(info, link if link is not None else jpeg_bytes())
        if member.endswith(".jpg"):
            archive.writestr(member.replace("images/train2017", "labels/train2017").replace(".jpg", ".txt"),
                             "0 0.5 0.5 0.2 0.4\n")
    return source


@pytest.mark.parametrize("member", HOSTILE_MEMBERS)
def test_a_zip_member_leaving_the_archive_is_refused_naming_it(tmp_path: Path, member: str) -> None:
    source = hostile_zip(tmp_path, member)
    message = refused(source, params(("person",), "draw"), tmp_path / "out")
    assert message == f"prepare.source: {source}!{member}: {HOSTILE_MEMBERS[member]}; refused (a hostile or broken " \
                      "source)"


def test_a_zip_link_is_followed_inside_the_archive_and_refused_outside(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    inside = hostile_zip(tmp_path / "in", "coco128/images/train2017/link.jpg", link="000000000001.jpg")
    prepare_dataset(inside, params(("person",), "draw"), tmp_path / "out")
    assert (tmp_path / "out" / "images").is_dir()
    (tmp_path / "out2").mkdir()
    member = "coco128/images/train2017/escape.jpg"
    outside = hostile_zip(tmp_path / "out2", member, link="../../../../etc/hostname")
    message = refused(outside, params(("person",), "draw"), tmp_path / "out3")
    assert message.startswith(f"prepare.source: {outside}!{member}: a link to ../../../../etc/hostname, outside the "
                              "archive; refused")


def test_a_folder_whose_link_points_outside_is_refused_naming_it(tmp_path: Path) -> None:
    source = make_source(tmp_path, person_labels(8), as_zip=False)
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(jpeg_bytes())
    (source / "images" / "train2017" / "secret.jpg").symlink_to(secret)
    message = refused(source, params(("person",), "draw"), tmp_path / "out")
    assert message.startswith(f"prepare.source: {source / 'images/train2017/secret.jpg'}: a link to {secret}, "
                              "outside the source; refused")
    (source / "images" / "train2017" / "secret.jpg").unlink()
    os.symlink("../../README.txt", source / "images" / "train2017" / "inside.txt")  # inside the source: read
    prepare_dataset(source, params(("person",), "draw"), tmp_path / "out")


def test_a_zip_link_to_a_member_it_lacks_is_refused_naming_it(tmp_path: Path) -> None:
    member = "coco128/images/train2017/gone.jpg"
    source = hostile_zip(tmp_path, member, link="missing.jpg")
    message = refused(source, params(("person",), "draw"), tmp_path / "out")
    assert message == f"prepare.source: {source}!{member}: a link to missing.jpg, which is not in the archive; " \
                      "refused (a hostile or broken source)"


def test_a_folder_link_loop_is_refused_naming_it(tmp_path: Path) -> None:
    source = make_source(tmp_path, person_labels(8), as_zip=False)
    os.symlink("loop", source / "images" / "train2017" / "loop")  # a link to itself
    message = refused(source, params(("person",), "draw"), tmp_path / "out")
    assert message == f"prepare.source: {source / 'images/train2017/loop'}: a link to loop, which leads to no file " \
                      "or folder; refused (a hostile or broken source)"


def test_a_data_yaml_beside_other_files_reads_only_its_splits(tmp_path: Path, reference: tuple[Path, dict]) -> None:
    """A data.yaml at the top of a project (no `path`: its own folder is the root) reads the folders its splits
    name, with their labels, and nothing else there (a virtualenv's links out of it, say)."""
    project = tmp_path / "project"
    make_dataset(project, "images_split")
    (project / "venv" / "bin").mkdir(parents=True)
    (project / "venv" / "bin" / "python").symlink_to(sys.executable)
    source = project / "data.yaml"
    source.write_text(yaml.safe_dump({"train": "fruit/images/train", "val": "fruit/images/val",
                                      "test": "fruit/images/test", "names": list(FRUIT)}))
    prepare_dataset(source, params(), tmp_path / "out")
    assert tree_digest(tmp_path / "out") == tree_digest(reference[0])


def test_the_stage_refuses_a_hostile_zip_with_exit_1_and_writes_nothing(tmp_path: Path) -> None:
    source = hostile_zip(tmp_path, "/tmp/x.txt")
    project = tmp_path / "project"
    project.mkdir()
    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    raw["prepare"]["source"] = str(source)
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    result = subprocess.run([sys.executable, "-m", "stages.prepare"], cwd=project, capture_output=True, text=True,
                            env=project_env(PYTHONPATH=str(PROJECT_ROOT)), timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().endswith(f"error: prepare.source: {source}!/tmp/x.txt: an absolute path; refused "
                                          "(a hostile or broken source)")
    assert sorted(path.name for path in project.iterdir()) == ["params.yaml"]
