"""What a detection source holds, in Ultralytics' terms: its files (a zip or a folder, none of them leaving it),
its class names and the image files of each of its splits, from a data.yaml or from the folder layout."""

import os
import posixpath
import re
import stat
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from yolo_mlops.core.errors import PipelineError
from yolo_mlops.core.paths import project_root
from yolo_mlops.core.vocabulary import SPLITS

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
YAML_SUFFIXES = (".yaml", ".yml")
SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
CLASSES_FILE = "classes.txt"  # one name a line, as labelling tools export it beside a YOLO layout
# Without a data.yaml or classes.txt, label ids are COCO's (COCO128 has neither).
COCO_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)
LAYOUT_A, LAYOUT_B, LAYOUT_FLAT = "images/<split>/ + labels/<split>/", "<split>/images/ + <split>/labels/", "images/"


class SourceTree:
    """Read-only view of a zip or a folder, as `relative/posix/path` → bytes. A member with an absolute path or
    a `..` component, or a link leaving the source or pointing nowhere, is refused, naming it. `parts`: of a
    folder, only these files and folders (relative to it) are read."""

    def __init__(self, location: Path, parts: Iterable[str] = ()):
        self.location = location
        self.members: dict[str, Any] = (self._folder(location, tuple(parts)) if location.is_dir()
                                        else self._zip(location))
        self.folders = {str(parent) for member in self.members for parent in PurePosixPath(member).parents}

    def _refuse(self, member: str, why: str) -> PipelineError:
        return PipelineError(f"prepare.source: {self.describe(member)}: {why}; refused (a hostile or broken source)")

    def _resolved(self, root: Path, path: Path) -> Path:
        """Where a link leads: inside the source, or refused."""
        try:
            target = path.resolve(strict=True)
        except (OSError, RuntimeError):  # a link to nothing, or a loop of links
            raise self._refuse(path.relative_to(root).as_posix(),
                               f"a link to {os.readlink(path)}, which leads to no file or folder") from None
        if not target.is_relative_to(root.resolve()):
            raise self._refuse(path.relative_to(root).as_posix(), f"a link to {os.readlink(path)}, outside the source")
        return target

    def _folder(self, root: Path, parts: tuple[str, ...]) -> dict[str, Path]:
        members, seen = {}, set()
        for start in [root / part for part in parts] or [root]:
            if start.is_symlink():
                self._resolved(root, start)
            if start.is_file():
                members[start.relative_to(root).as_posix()] = start
            for folder, subfolders, files in os.walk(start, followlinks=True):
                here = Path(folder)
                if here.resolve() in seen:  # a link back to a folder already walked
                    subfolders.clear()
                    continue
                seen.add(here.resolve())
                for name in [*subfolders, *files]:
                    if (here / name).is_symlink():
                        self._resolved(root, here / name)
                for name in files:
                    path = here / name
                    if path.is_file():
                        members[path.relative_to(root).as_posix()] = path
        return members

    def _zip(self, location: Path) -> dict[str, Any]:
        archive = zipfile.ZipFile(location)
        self._archive = archive
        members: dict[str, Any] = {}
        written = {info.filename for info in archive.infolist()}
        for info in archive.infolist():
            name = info.filename
            if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
                raise self._refuse(name, "an absolute path")
            if ".." in re.split(r"[/\\]", name):
                raise self._refuse(name, "a '..' component in its path")
            if stat.S_ISLNK(info.external_attr >> 16):
                target = archive.read(info).decode("utf-8", errors="replace")
                resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
                if target.startswith("/") or resolved == ".." or resolved.startswith("../"):
                    raise self._refuse(name, f"a link to {target}, outside the archive")
                if resolved not in written:
                    raise self._refuse(name, f"a link to {target}, which is not in the archive")
                members[name] = resolved  # read as the member it points to
            elif not info.is_dir():
                members[name] = name
        return members

    def read(self, member: str) -> bytes:
        if isinstance(self.members[member], Path):
            return self.members[member].read_bytes()
        return self._archive.read(self.members[member])

    def is_folder(self, member: str) -> bool:
        return member in self.folders

    def describe(self, member: str) -> str:
        """How to name a member in a message: the file path, or zip!member."""
        return str(self.location / member) if self.location.is_dir() else f"{self.location}!{member}"


@dataclass(frozen=True)
class Layout:
    """A source as Ultralytics reads it: class names by id, and the image members of each split."""

    tree: SourceTree
    names: dict[int, str]
    names_from: str  # where the names come from, for messages
    splits: dict[str, list[str]]  # train / val / test → image members, sorted; a split the source lacks is absent


def label_member_for(image_member: str) -> str:
    """Ultralytics' rule: the last images/ folder of the path becomes labels/, the suffix .txt (no images/
    folder: the label file lies beside the image)."""
    parts = list(PurePosixPath(image_member).with_suffix(".txt").parts)
    if "images" in parts[:-1]:
        parts[len(parts) - 1 - parts[::-1].index("images")] = "labels"
    return PurePosixPath(*parts).as_posix()


def is_image(member: str) -> bool:
    return member.lower().endswith(IMAGE_SUFFIXES)


def split_name(folder: str) -> str | None:
    """A split folder's split: train, val (also valid) or test; COCO's train2017 is train."""
    return SPLIT_ALIASES.get(re.sub(r"\d+$", "", folder.lower()))


def read_names(value: Any, where: str) -> dict[int, str]:
    """data.yaml's `names`, a list or a mapping id → name, as id → name."""
    if isinstance(value, list) and value:
        return {index: str(name) for index, name in enumerate(value)}
    if isinstance(value, dict) and value and all(isinstance(key, int) for key in value):
        return {key: str(name) for key, name in sorted(value.items())}
    raise PipelineError(f"{where}: names must be a list of class names or a mapping id → name (got {value!r})")


def key_line(text: str, key: str) -> int | None:
    """The line of a top-level `key:` in a YAML text, for messages."""
    for number, line in enumerate(text.splitlines(), start=1):
        if re.match(rf"^{re.escape(key)}\s*:", line):
            return number
    return None


def load_yaml(text: str, where: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise PipelineError(f"{where}: not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise PipelineError(f"{where}: a dataset YAML must be a mapping with names, train, val (and test)")
    return data


def yaml_splits(data: dict[str, Any], text: str, where: str, root: str, exists: Callable[[str], bool],
                join: Callable[[str, str], str]) -> dict[str, list[str]]:
    """data.yaml's train / val / test entries resolved as Ultralytics does: against the dataset root, a
    `../` entry that does not exist there read without it. A missing folder is refused with file, line, key."""
    resolved: dict[str, list[str]] = {}
    for split in SPLITS:
        value = data.get(split)
        if not value:
            continue
        entries = [value] if isinstance(value, str) else value
        if not isinstance(entries, list) or not all(isinstance(entry, str) for entry in entries):
            raise PipelineError(f"{where}: {split} must be a folder, a list file or a list of them (got {value!r})")
        targets = []
        for entry in entries:
            target = join(root, entry)
            if not exists(target) and entry.startswith("../"):
                target = join(root, entry[3:])
            if not exists(target):
                line = key_line(text, split)
                raise PipelineError(f"{where}{f':{line}' if line else ''}: {split}: {entry} does not exist "
                                    f"(resolved to {target or '.'})")
            targets.append(target)
        resolved[split] = targets
    if "train" not in resolved and "val" not in resolved:
        raise PipelineError(f"{where}: names no train or val split")
    return resolved


def _members_of(tree: SourceTree, targets: Iterable[str]) -> list[str]:
    """The image members of split targets: folders (searched recursively) or list files (one image a line)."""
    images: dict[str, None] = {}
    for target in targets:
        if tree.is_folder(target) or target == "":
            prefix = f"{target}/" if target else ""
            images |= dict.fromkeys(m for m in tree.members if m.startswith(prefix) and is_image(m))
            continue
        folder = posixpath.dirname(target)
        for line in tree.read(target).decode("utf-8", errors="replace").splitlines():
            line = line.strip()
            member = posixpath.normpath(posixpath.join(folder, line)) if line else ""
            if member and member not in tree.members:
                raise PipelineError(f"{tree.describe(target)}: lists {line}, which is not in the source")
            if member:
                images[member] = None
    return sorted(images)


def _from_yaml_member(tree: SourceTree, member: str) -> Layout:
    """A data.yaml inside a zip or folder: its paths are relative to its own folder (as Ultralytics reads a
    dataset zip), and may not leave the source."""
    where, text = tree.describe(member), tree.read(member).decode("utf-8", errors="replace")
    data = load_yaml(text, where)

    def join(root: str, entry: str) -> str:
        joined = posixpath.normpath(posixpath.join(root, entry))
        if entry.startswith("/") or joined == ".." or joined.startswith("../"):
            raise PipelineError(f"{where}: {entry} leaves the source; refused")
        return "" if joined == "." else joined

    splits = yaml_splits(data, text, where, posixpath.dirname(member),
                         lambda target: target == "" or tree.is_folder(target) or target in tree.members, join)
    names = read_names(data.get("names"), where)
    return Layout(tree, names, where, {split: _members_of(tree, targets) for split, targets in splits.items()})


def from_yaml_file(path: Path) -> Layout:
    """`prepare.source` naming a data.yaml: its `path` (the dataset root; relative to the project root as
    Ultralytics takes it relative to its working folder, else to the file's folder; absent: the file's folder),
    and train / val / test relative to that root."""
    text = path.read_text(encoding="utf-8", errors="replace")
    data = load_yaml(text, str(path))
    root = Path(str(data.get("path") or path.parent)).expanduser()
    if not root.is_absolute():
        root = project_root() / root if (project_root() / root).exists() else path.parent / root
    splits = yaml_splits(data, text, str(path), str(root.resolve()), lambda target: Path(target).exists(),
                         lambda base, entry: str((Path(base) / entry).resolve()))
    targets = [Path(target) for split in splits.values() for target in split]
    common = Path(os.path.commonpath([root.resolve(), *(t if t.is_dir() else t.parent for t in targets)]))
    # Only what the splits name is read (a data.yaml beside other files, or far from its data, walks no more):
    # each split folder with its labels/ counterpart, and the folder of each list file.
    parts = {_relative(folder, common) for target in targets
             for folder in ((target, Path(label_member_for(f"{target}/x.jpg")).parent) if target.is_dir()
                            else (target.parent,)) if folder.is_relative_to(common)}
    tree = SourceTree(common, sorted(parts))
    relative = {split: [_relative(Path(target), common) for target in entries] for split, entries in splits.items()}
    names = read_names(data.get("names"), str(path))
    return Layout(tree, names, str(path), {split: _members_of(tree, t) for split, t in relative.items()})


def _relative(path: Path, root: Path) -> str:
    relative = path.relative_to(root).as_posix()
    return "" if relative == "." else relative


def _dataset_yamls(tree: SourceTree) -> list[str]:
    """The dataset YAMLs of a zip or folder (a mapping with `names`), at its top or one folder down."""
    found = []
    for member in sorted(tree.members):
        if member.lower().endswith(YAML_SUFFIXES) and len(PurePosixPath(member).parts) <= 2:
            try:
                data = yaml.safe_load(tree.read(member))
            except yaml.YAMLError:
                continue
            if isinstance(data, dict) and "names" in data:
                found.append(member)
    return found


def _from_folders(tree: SourceTree) -> Layout:
    """No data.yaml: the split of each image from its folders, one layout for the whole source."""
    splits: dict[str, list[str]] = {}
    layouts: dict[str, str] = {}  # layout → an example member
    for member in sorted(tree.members):
        parts = PurePosixPath(member).parts
        if not is_image(member) or "images" not in parts[:-1]:
            continue
        index = len(parts) - 2 - parts[-2::-1].index("images")
        if index == len(parts) - 2:  # directly in images/: <split>/images/ or a single images/ folder
            split = split_name(parts[index - 1]) if index else None
            layout = LAYOUT_B if split else LAYOUT_FLAT
            split = split or "train"
        else:
            layout, split = LAYOUT_A, split_name(parts[index + 1])
            if split is None:
                raise PipelineError(f"prepare.source: {tree.describe(member)}: {parts[index + 1]!r} is not a split "
                                    f"folder (train, val, valid or test) of the layout {LAYOUT_A}")
        layouts.setdefault(layout, member)
        splits.setdefault(split, []).append(member)
    if len(layouts) > 1:
        mixed = " and ".join(f"{layout} (e.g. {member})" for layout, member in layouts.items())
        raise PipelineError(f"prepare.source: {tree.location} mixes two layouts: {mixed}; keep one")
    classes = sorted((m for m in tree.members if PurePosixPath(m).name == CLASSES_FILE),
                     key=lambda m: len(PurePosixPath(m).parts))
    if classes:
        lines = [line.strip() for line in tree.read(classes[0]).decode("utf-8", errors="replace").splitlines()]
        names, names_from = dict(enumerate(line for line in lines if line)), tree.describe(classes[0])
    else:
        names, names_from = dict(enumerate(COCO_NAMES)), f"COCO's 80 classes ({tree.location} has no data.yaml)"
    return Layout(tree, names, names_from, splits)


def read_layout(source: Path) -> Layout:
    """The layout of a located source (data/source.py): a data.yaml file, or a zip or folder holding one, or
    one of the folder layouts."""
    if source.is_file() and source.suffix.lower() in YAML_SUFFIXES:
        return from_yaml_file(source)
    tree = SourceTree(source)
    found = _dataset_yamls(tree)
    if len(found) > 1:
        raise PipelineError(f"prepare.source: {source} holds several dataset YAMLs ({', '.join(found)}); "
                            "point prepare.source at the one to use")
    return _from_yaml_member(tree, found[0]) if found else _from_folders(tree)
