"""Read and validate params.yaml: the single place the project's settings are read."""

import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from yolo_mlops.core.errors import PipelineError
from yolo_mlops.core.paths import PARAMS_FILE
from yolo_mlops.core.vocabulary import EVAL_METRICS, SPLITS, flatten

# The sections the DVC stages read: an experiment's params (MLflow run params, `dvc exp show`).
PIPELINE_SECTIONS = ("prepare", "train", "evaluate", "mlflow")
OPTIMIZERS = ("SGD", "Adam", "AdamW", "NAdam", "RAdam", "RMSProp", "MuSGD")
_DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|\d+(,\d+)*)$")


ALL_CLASSES = "all"  # prepare.classes: every class of the source, in its order
SPLIT_MODES = ("draw", "keep")  # prepare.split: new splits drawn with prepare.seed, or the source's own
# evaluate.bootstrap: fewer resamples leave too few in the tails for a 95 % interval; more only cost time.
MIN_BOOTSTRAP, MAX_BOOTSTRAP = 200, 100_000
REPLACED_KEYS = {"class_id": "classes", "class_name": "classes"}  # older params.yaml keys → their successor


@dataclass(frozen=True)
class PrepareParams:
    source: str
    classes: tuple[str, ...] | str  # the names kept, in the output's order, or ALL_CLASSES
    split: str  # one of SPLIT_MODES
    train: int | float  # images per split (counts), or fractions of the source's images
    val: int | float
    test: int | float
    seed: int

    @property
    def split_sizes(self) -> dict[str, int | float]:
        return {"train": self.train, "val": self.val, "test": self.test}

    @property
    def fractions(self) -> bool:
        """Whether the split sizes are fractions of the source (0.8 / 0.1 / 0.1), not counts (40 / 10 / 10)."""
        return any(isinstance(size, float) for size in self.split_sizes.values())


@dataclass(frozen=True)
class TrainParams:
    model: str
    epochs: int
    imgsz: int
    lr0: float
    seed: int
    batch: int
    optimizer: str
    device: str
    workers: int


@dataclass(frozen=True)
class EvaluateParams:
    conf: float
    iou: float
    splits: tuple[str, ...]
    bootstrap: int  # resamples of the images for the intervals in metrics/eval.json; 0: no intervals


@dataclass(frozen=True)
class MlflowParams:
    experiment_name: str


@dataclass(frozen=True)
class CompareParams:
    rank_by: tuple[str, ...]  # `split.metric` as in metrics/eval.json: the primary metric, then tie-breaks


@dataclass(frozen=True)
class PromoteParams:
    registered_model: str
    min_test_map50_95: float
    min_test_recall: float
    min_margin: float  # over the current champion's test mAP50-95: the gate when no paired test is possible
    min_confidence: float = 0.95  # the paired test's probability that the challenger beats the champion


@dataclass(frozen=True)
class Params:
    prepare: PrepareParams
    train: TrainParams
    evaluate: EvaluateParams
    mlflow: MlflowParams
    compare: CompareParams
    promote: PromoteParams

    def flat(self) -> dict[str, Any]:
        """`section.key` → value of the pipeline sections, as DVC names params (`dvc exp show`, `-S`)."""
        flat = flatten({section: asdict(getattr(self, section)) for section in PIPELINE_SECTIONS})
        return {key: list(value) if isinstance(value, tuple) else value for key, value in flat.items()}


class _Section:
    """Typed access to one section of the params file, with errors naming file and key."""

    def __init__(self, path: Path, name: str, values: Any) -> None:
        if not isinstance(values, dict):
            raise PipelineError(f"{path}: section '{name}' is missing or not a mapping")
        self.path, self.name, self.values = path, name, values

    def fail(self, key: str, message: str) -> PipelineError:
        return PipelineError(f"{self.path}: {self.name}.{key} {message} (got {self.values.get(key)!r})")

    def get(self, key: str, kind: type) -> Any:
        if key not in self.values:
            raise PipelineError(f"{self.path}: {self.name}.{key} is missing")
        value = self.values[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if kind is str and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # e.g. device: 0
        if not isinstance(value, kind) or isinstance(value, bool):
            raise self.fail(key, f"must be of type {kind.__name__}")
        return value

    def at_least(self, key: str, minimum: int) -> int:
        value = self.get(key, int)
        if value < minimum:
            raise self.fail(key, f"must be >= {minimum}")
        return value

    def build(self, cls: type, **values: Any) -> Any:
        unknown = sorted(set(self.values) - {field.name for field in fields(cls)})
        if unknown:
            replaced = sorted({f"{self.name}.{REPLACED_KEYS[key]}" for key in unknown if key in REPLACED_KEYS})
            hint = f" (replaced by {', '.join(replaced)}, e.g. classes: [person])" if replaced else ""
            raise PipelineError(f"{self.path}: unknown key(s) in '{self.name}': {', '.join(unknown)}{hint}")
        return cls(**values)


def _prepare(section: _Section) -> PrepareParams:
    source = section.get("source", str).strip()
    if not source:
        raise section.fail("source", "must name a URL, a zip file or a folder")
    split = section.get("split", str)
    if split not in SPLIT_MODES:
        raise section.fail("split", f"must be one of {', '.join(SPLIT_MODES)}")
    sizes = {name: _split_size(section, name) for name in SPLITS}
    if len({type(size) for size in sizes.values()}) > 1:
        got = ", ".join(f"{name}={size}" for name, size in sizes.items())
        raise PipelineError(f"{section.path}: prepare.train, prepare.val and prepare.test must be all counts "
                            f"(40, 10, 10) or all fractions (0.8, 0.1, 0.1) (got {got})")
    if isinstance(sizes["train"], float) and sum(sizes.values()) > 1 + 1e-9:
        raise section.fail("train", "+ prepare.val + prepare.test, as fractions, must add up to at most 1")
    return section.build(PrepareParams, source=source, classes=_classes(section), split=split, **sizes,
                         seed=section.get("seed", int))


def _classes(section: _Section) -> tuple[str, ...] | str:
    value = section.values.get("classes")
    if value == ALL_CLASSES:
        return ALL_CLASSES
    classes = section.get("classes", list)
    if not classes:
        raise section.fail("classes", f"must list at least one class name, or be {ALL_CLASSES!r}")
    if any(not isinstance(name, str) or not name.strip() for name in classes):
        raise section.fail("classes", "must be class names (text), e.g. [person, car]")
    if len(set(classes)) != len(classes):
        raise section.fail("classes", "must not name a class twice")
    return tuple(classes)


def _split_size(section: _Section, key: str) -> int | float:
    """A split's size: a count >= 1, or a fraction in (0, 1)."""
    value = section.values.get(key)
    if isinstance(value, float):
        if not 0 < value < 1:
            raise section.fail(key, "as a fraction must be in (0, 1); give a count (e.g. 10) otherwise")
        return value
    return section.at_least(key, 1)


def _train(section: _Section) -> TrainParams:
    imgsz = section.get("imgsz", int)
    if imgsz <= 0 or imgsz % 32:
        raise section.fail("imgsz", "must be a positive multiple of 32")
    lr0 = section.get("lr0", float)
    if not lr0 > 0:
        raise section.fail("lr0", "must be > 0")
    optimizer = section.get("optimizer", str)
    if optimizer not in OPTIMIZERS:
        raise section.fail("optimizer", f"must be one of {', '.join(OPTIMIZERS)} (not 'auto', which ignores lr0)")
    device = section.get("device", str).replace(" ", "")
    if not _DEVICE_PATTERN.match(device):
        raise section.fail("device", "must be auto, cpu, mps or CUDA indices such as 0 or 0,1")
    model = section.get("model", str).strip()
    if not model.endswith((".pt", ".yaml", ".yml")):
        raise section.fail("model", "must be a .pt weights file or a .yaml config (e.g. yolov8n.pt, yolov8n.yaml)")
    return section.build(
        TrainParams,
        model=model,
        epochs=section.at_least("epochs", 1),
        imgsz=imgsz,
        lr0=lr0,
        seed=section.get("seed", int),
        batch=section.at_least("batch", 1),
        optimizer=optimizer,
        device=device,
        workers=section.at_least("workers", 0),
    )


def _evaluate(section: _Section) -> EvaluateParams:
    conf, iou = section.get("conf", float), section.get("iou", float)
    if not 0 <= conf < 1:
        raise section.fail("conf", "must be in [0, 1)")
    if not 0 < iou <= 1:
        raise section.fail("iou", "must be in (0, 1]")
    splits = section.get("splits", list)
    if not splits or any(split not in SPLITS for split in splits) or len(set(splits)) != len(splits):
        raise section.fail("splits", f"must be a non-empty list of distinct splits among {', '.join(SPLITS)}")
    bootstrap = section.get("bootstrap", int)
    if bootstrap != 0 and not MIN_BOOTSTRAP <= bootstrap <= MAX_BOOTSTRAP:
        raise section.fail("bootstrap", f"must be 0 (no intervals) or {MIN_BOOTSTRAP} to {MAX_BOOTSTRAP} resamples")
    return section.build(EvaluateParams, conf=conf, iou=iou, splits=tuple(splits), bootstrap=bootstrap)


def _mlflow(section: _Section) -> MlflowParams:
    name = section.get("experiment_name", str).strip()
    if not name:
        raise section.fail("experiment_name", "must not be empty")
    return section.build(MlflowParams, experiment_name=name)


def _compare(section: _Section) -> CompareParams:
    rank_by = section.get("rank_by", list)
    wanted = f"split.metric with split in {', '.join(SPLITS[1:])} and metric in {', '.join(EVAL_METRICS)}"
    for name in rank_by:
        split, _, metric = str(name).partition(".")
        if split not in SPLITS[1:] or metric not in EVAL_METRICS:
            raise section.fail("rank_by", f"entries must be {wanted}, e.g. val.mAP50-95")
    if not rank_by or len(set(rank_by)) != len(rank_by):
        raise section.fail("rank_by", "must list the primary metric, then distinct tie-breaks")
    return section.build(CompareParams, rank_by=tuple(rank_by))


def _fraction(section: _Section, key: str) -> float:
    value = section.get(key, float)
    if not 0 <= value <= 1:
        raise section.fail(key, "must be in [0, 1]")
    return value


def _promote(section: _Section) -> PromoteParams:
    name = section.get("registered_model", str).strip()
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise section.fail("registered_model", "must be a name of letters, digits, '_', '.' or '-'")
    return section.build(
        PromoteParams,
        registered_model=name,
        min_test_map50_95=_fraction(section, "min_test_map50_95"),
        min_test_recall=_fraction(section, "min_test_recall"),
        min_margin=_fraction(section, "min_margin"),
        min_confidence=_confidence(section),
    )


def _confidence(section: _Section) -> float:
    """promote.min_confidence: at least a coin flip (0.5), at most certainty (1); 0.95 when not set."""
    if "min_confidence" not in section.values:
        return PromoteParams.min_confidence
    value = section.get("min_confidence", float)
    if not 0.5 <= value <= 1:
        raise section.fail("min_confidence", "must be in [0.5, 1]: the probability that the challenger beats the "
                                             "champion, e.g. 0.95")
    return value


def read_yaml(path: Path) -> Any:
    """A YAML file of the project; a missing or malformed one is a PipelineError naming it."""
    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PipelineError(f"{path}: not found (run from the project root)") from None
    except yaml.YAMLError as error:
        raise PipelineError(f"{path}: not valid YAML: {error}") from None


def load_params(path: Path = PARAMS_FILE, overrides: dict[str, Any] | None = None) -> Params:
    """Load and validate every section, so a bad value is refused before any stage works.

    `overrides` ({"train.imgsz": 416, ...}, as `dvc exp run -S` sets them) are applied first:
    that is how an experiment's params are checked before it is queued."""
    raw = read_yaml(path)
    if isinstance(raw, dict):
        for dotted, value in (overrides or {}).items():
            section, _, key = dotted.partition(".")
            if not isinstance(raw.get(section), dict):
                raise PipelineError(f"{path}: no section {section!r} for {dotted}")
            raw[section] = raw[section] | {key: value}
    if not isinstance(raw, dict):
        raise PipelineError(f"{path}: must be a mapping of sections")
    builders = {
        "prepare": _prepare, "train": _train, "evaluate": _evaluate, "mlflow": _mlflow,
        "compare": _compare, "promote": _promote,
    }
    unknown = sorted(set(raw) - set(builders))
    if unknown:
        raise PipelineError(f"{path}: unknown section(s): {', '.join(unknown)}")
    return Params(**{name: build(_Section(path, name, raw.get(name))) for name, build in builders.items()})
