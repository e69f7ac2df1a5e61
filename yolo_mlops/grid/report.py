"""The decision report: reports/templates/decision_template.md filled in from the comparison, the
insights and the promotion's outcome."""

import math
import string
from dataclasses import dataclass
from pathlib import Path

from yolo_mlops.core import vocabulary
from yolo_mlops.core.atomic import atomic_file
from yolo_mlops.core.errors import PipelineError
from yolo_mlops.core.params import Params
from yolo_mlops.core.vocabulary import CHAMPION
from yolo_mlops.grid.insights import Insights
from yolo_mlops.grid.ranking import Comparison, RunSummary
from yolo_mlops.grid.registry import Promotion, interval_text, paired_text
from yolo_mlops.grid.resampling import TESTED, images_to_separate

TOP = 3
IMBALANCE = 0.15  # |precision − recall| above which the detector is called unbalanced
GAP = 0.05  # |val − test| mAP50-95 above which generalisation is questioned
TABLE_PARAMS = ("train.epochs", "train.imgsz", "train.lr0", "train.seed")  # the grid's usual axes


@dataclass(frozen=True)
class ReportData:
    params: Params
    baseline: str
    tracking_uri: str
    hardware: str
    comparison: Comparison
    insights: Insights
    promotion: Promotion
    curves: dict[str, list[tuple[int, float]]]  # run name → (epoch, value) of curve_metric
    curve_metric: str | None  # the per-epoch metric (val) behind `curves`; None when training records none


def _number(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.4f}"


def table(comparison: Comparison) -> str:
    """The ranked runs as a Markdown table (val ranks, test alongside); unranked runs listed after."""
    header = ["#", "run", *(key.split(".")[-1] for key in TABLE_PARAMS)]
    header += [f"{split} {m}" for split in vocabulary.REPORTED_SPLITS for m in vocabulary.REPORTED_METRICS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for rank, run in enumerate(comparison.ranked, start=1):
        cells = [str(rank), run.name] + [run.params.get(key, "") for key in TABLE_PARAMS]
        cells += [_number(run.metric(f"{split}.{m}"))
                  for split in vocabulary.REPORTED_SPLITS for m in vocabulary.REPORTED_METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    for run, why in comparison.excluded:
        cells = ["–", run.name] + [run.params.get(key, "") for key in TABLE_PARAMS] + [why]
        cells += [""] * (len(header) - len(cells))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.4f}"


def objectives(data: ReportData) -> str:
    best, train = data.comparison.ranked[0], data.params.train
    runs = len(data.comparison.ranked) + len(data.comparison.excluded)
    sizes = ", ".join(f"{split} {int(best.metric(f'data.{split}_images'))} images"
                      for split in ("train", "val", "test") if f"data.{split}_images" in best.metrics)
    classes = ", ".join(best.classes) or "its classes"
    return "\n".join([
        f"- Objective: the best detector of {classes} of the grid by **{data.comparison.primary}** "
        f"(tie-breaks: {', '.join(data.comparison.rank_by[1:]) or 'none'}), registered as `{data.promotion.name}`.",
        f"- Dataset: {len(best.classes) or '?'} class(es), {classes} ({sizes}; `prepare.source` "
        f"{data.params.prepare.source}); "
        f"{int(best.metric('data.test_boxes')) if 'data.test_boxes' in best.metrics else 'n/a'} boxes in test.",
        f"- Training budget: {runs} experiment(s) of {best.params.get('train.epochs', '?')} epoch(s), "
        f"model `{best.params.get('train.model', train.model)}`, batch {best.params.get('train.batch', train.batch)}.",
        f"- Hardware: {data.hardware} (train.device={train.device}).",
        f"- Gates for champion: test mAP50-95 ≥ {data.params.promote.min_test_map50_95}, test recall ≥ "
        f"{data.params.promote.min_test_recall}, and beat the champion's test mAP50-95: with a probability of at "
        f"least {data.params.promote.min_confidence} in a paired test on the same test images, or, when the two "
        f"were tested on different images, by a margin of {data.params.promote.min_margin}.",
    ])


def recommended(data: ReportData) -> str:
    best = data.comparison.ranked[0]
    params = ", ".join(f"{key.split('.')[-1]}={best.params[key]}" for key in vocabulary.HYPERPARAMETERS
                       if key in best.params)
    metrics = "\n".join(f"| {split} | " + " | ".join(_fmt(best.metric(f"{split}.{m}"))
                                                    for m in vocabulary.REPORTED_METRICS)
                        + " |" for split in vocabulary.REPORTED_SPLITS)
    return (f"- DVC experiment `{best.name}`, MLflow run id `{best.run_id}`, registered as "
            f"`{data.promotion.name}` version {data.promotion.version}.\n- Hyperparameters: {params}.\n\n"
            "| split | mAP50-95 | mAP50 | precision | recall |\n|---|---|---|---|---|\n" + metrics)


def class_names(run: RunSummary) -> list[str]:
    """The run's classes, in the dataset's order (names without a per-class result at the end)."""
    measured = vocabulary.class_results(run.metrics, "test")
    return [name for name in run.classes if name in measured] + sorted(set(measured) - set(run.classes))


def per_class(comparison: Comparison) -> str:
    """Test AP50-95, AP50, precision and recall of each class, for the best run and the runner-up."""
    shown = comparison.ranked[:2]
    header = ["class", *(f"{run.name} {metric}" for run in shown for metric in vocabulary.CLASS_METRICS), "test boxes"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    results = [vocabulary.class_results(run.metrics, "test") for run in shown]
    best = shown[0]
    for name in class_names(best):
        cells = [name] + [_fmt(result.get(name, {}).get(metric, math.nan)) for result in results
                          for metric in vocabulary.CLASS_METRICS]
        boxes = best.metric(vocabulary.data_value(f"test.{vocabulary.CLASSES_KEY}.{name}.boxes"))
        lines.append("| " + " | ".join([*cells, "?" if math.isnan(boxes) else str(int(boxes))]) + " |")
    if len(lines) == 2:
        return "No per-class results were recorded for these runs."
    return ("Per class, on the test split (the gates stay on the all-class metrics):\n\n" + "\n".join(lines))


def weakest_class(best: RunSummary) -> tuple[str, str, str]:
    """The risk of the class the best run detects worst (test mAP50-95)."""
    results = vocabulary.class_results(best.metrics, "test")
    ordered = sorted(class_names(best), key=lambda name: results[name].get("mAP50-95", math.nan))
    if not ordered:
        return ("Weakest class", "no per-class results were recorded.", "Re-run evaluate to record them.")
    weakest, strongest = ordered[0], ordered[-1]
    boxes = best.metric(vocabulary.data_value(f"test.{vocabulary.CLASSES_KEY}.{weakest}.boxes"))
    count = "?" if math.isnan(boxes) else str(int(boxes))
    low, high = (results[name].get("mAP50-95", math.nan) for name in (weakest, strongest))
    finding = f"`{weakest}`: test mAP50-95 {_fmt(low)} on {count} box(es)"
    finding += (" (the only class)." if len(ordered) == 1 else f", against {_fmt(high)} for `{strongest}`."
                if low != high else f"; all {len(ordered)} classes score the same, none stands out.")
    return ("Weakest class", finding, f"Add images of `{weakest}` (or check its labels) and watch its AP in the "
                                      "per-class table; a gate on the all-class figures can hide it.")


def pros_cons(run: RunSummary, top: list[RunSummary]) -> tuple[list[str], list[str]]:
    """Pros and cons of one of the top runs, from its numbers relative to the others."""
    pros, cons = [], []
    for name in ("val.mAP50-95", "test.mAP50-95", "test.precision", "test.recall"):
        values = [other.metric(name) for other in top]
        if len(set(values)) == 1:
            continue
        if run.metric(name) == max(values):
            pros.append(f"best {name} of the top {len(top)} ({_fmt(run.metric(name))})")
        elif run.metric(name) == min(values):
            cons.append(f"lowest {name} of the top {len(top)} ({_fmt(run.metric(name))})")
    gap = run.metric("val.mAP50-95") - run.metric("test.mAP50-95")
    if abs(gap) > GAP:
        cons.append(f"val–test gap of {gap:+.4f} mAP50-95")
    sizes = {int(other.params.get("train.imgsz", 0)) for other in top}
    if len(sizes) > 1:
        size = int(run.params.get("train.imgsz", 0))
        (pros if size == min(sizes) else cons).append(f"imgsz {size}: " + (
            f"cheapest inference of the top {len(top)}" if size == min(sizes) else "costlier inference than imgsz "
            f"{min(sizes)}"))
    if not pros and not cons:
        pros.append(f"identical to the others of the top {len(top)} on every compared metric")
    return pros, cons


def top3(data: ReportData) -> str:
    top = data.comparison.ranked[:TOP]
    lines = []
    for rank, run in enumerate(top, start=1):
        pros, cons = pros_cons(run, top)
        lines.append(f"{rank}. `{run.name}` (run `{run.run_id}`): {data.comparison.primary} "
                     f"{_fmt(run.metric(data.comparison.primary))}, test mAP50-95 {interval_text(run)}, "
                     f"test recall {interval_text(run, 'test.recall')}")
        lines += [f"   - pro: {text}" for text in pros] + [f"   - con: {text}" for text in cons]
    return "\n".join(lines) + "\n\n" + separation(top)


def _overlap(first: RunSummary, second: RunSummary, metric: str) -> bool:
    (_, low, high), (_, other_low, other_high) = first.interval(metric), second.interval(metric)
    return low <= other_high and other_low <= high


def separation(top: list[RunSummary], metric: str = TESTED) -> str:
    """One sentence: whether the test set tells the best run apart from the other top runs (their 95 % intervals
    over the test images overlap or not), and if not, about how many test images would."""
    best, others = top[0], top[1:]
    if not others:
        return "Only one run is ranked: there is nothing to tell it apart from."
    if any(math.isnan(value) for run in top for value in run.interval(metric)):
        return (f"Some of these runs record no 95 % interval of {metric} (evaluated before intervals were recorded): "
                "the report cannot say whether the test set tells them apart.")
    close = [run for run in others if _overlap(best, run, metric)]
    if not close:
        return (f"The test set tells `{best.name}` apart from the other top runs: its 95 % interval of {metric} "
                "overlaps none of theirs.")
    nearest = min(close, key=lambda run: abs(best.metric(metric) - run.metric(metric)))
    images = best.metric("data.test_images")
    half_widths = sum((high - low) / 2 for _, low, high in (best.interval(metric), nearest.interval(metric)))
    needed = images_to_separate(images, abs(best.metric(metric) - nearest.metric(metric)), half_widths)
    count = "?" if math.isnan(images) else str(int(images))
    if math.isinf(needed):
        tail = (f"`{best.name}` and `{nearest.name}` score the same ({_fmt(best.metric(metric))}), so more test images "
                "alone would not tell which is better")
    elif math.isnan(needed):
        tail = "the number of test images is not recorded, so how many more would be needed is unknown"
    else:
        tail = (f"about {int(needed)} test images instead of {count} would tell `{best.name}` from `{nearest.name}`, "
                "if the difference between them stayed as it is")
    rivals = ", ".join(f"`{run.name}`" for run in close)
    return (f"The test set cannot tell `{best.name}` apart from {rivals}: their 95 % intervals of {metric} overlap; "
            f"{tail}.")


def insights_text(data: ReportData) -> str:
    lines = data.insights.lines() or ["no factor varies between the ranked runs"]
    failed = [f"{run.name}: {why}" for run, why in data.comparison.excluded]
    return "\n".join([f"- {line}" for line in lines] + [f"- not ranked: {line}" for line in failed])


def wilson_interval(rate: float, count: float, z: float = 1.96) -> tuple[float, float]:
    """95 % interval of a rate measured on `count` trials (here: recall over the test boxes)."""
    if math.isnan(rate) or math.isnan(count) or count <= 0:
        return math.nan, math.nan
    denominator = 1 + z * z / count
    centre = (rate + z * z / (2 * count)) / denominator
    half = z * math.sqrt(rate * (1 - rate) / count + z * z / (4 * count * count)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def risks(data: ReportData) -> str:
    best, insights = data.comparison.ranked[0], data.insights
    boxes, images = best.metric("data.test_boxes"), best.metric("data.test_images")
    recall = best.metric("test.recall")
    low, high = wilson_interval(recall, boxes)
    precision = best.metric("test.precision")
    curve = data.curves.get(best.name, [])
    rising = len(curve) > 1 and curve[-1][1] > curve[-2][1]
    model = best.params.get("train.model", "")
    items = [
        ("Tiny test set",
         f"{int(images) if not math.isnan(images) else '?'} test images, "
         f"{int(boxes) if not math.isnan(boxes) else '?'} boxes: test recall {_fmt(recall)} could be anywhere in "
         f"[{_fmt(low)}, {_fmt(high)}] (95 % Wilson interval over the boxes); test mAP50-95 "
         f"{interval_text(best)} over the test images.",
         "Evaluate on a larger held-out set before relying on the figures; read the intervals, not the points."),
        ("Seed variance",
         f"typical seed std {insights.seed_std:.4f} {insights.metric}; winner's margin "
         + (f"{insights.margin:.4f}" if insights.margin is not None else "n/a")
         + (" — smaller than the seed spread" if insights.margin_within_noise else "")
         + (" — a tie" if insights.tie else "") + ".",
         "Add seeds per configuration and select on the mean over seeds."),
        ("Precision / recall balance",
         f"test precision {_fmt(precision)} vs recall {_fmt(recall)}: "
         + (f"unbalanced, {abs(precision - recall):.4f} apart (more than {IMBALANCE})"
            if abs(precision - recall) > IMBALANCE else f"balanced, within {IMBALANCE} of each other") + ".",
         "Tune the confidence threshold on the val PR curve for the use case (missed objects vs false alarms)."),
        ("Too few epochs / under-fitting",
         f"{best.params.get('train.epochs', '?')} epoch(s); "
         + (f"training records no per-epoch {insights.metric}: compare the curves in MLflow" if not data.curve_metric
            else f"{data.curve_metric} " + ("was still rising at the last epoch" if rising else
                                             "had levelled off or fallen by the last epoch" if len(curve) > 1
                                             else "has a single epoch: no trend to judge"))
         + ".",
         "Train longer with early stopping (Ultralytics `patience`) and compare the curves in epoch_curves.png."),
        ("Training from scratch vs pretrained",
         f"`{model}` " + ("is a random initialisation: expect weak detections from so few images" if
                          model.endswith((".yaml", ".yml")) else "starts from COCO-pretrained weights, which "
                          "already saw COCO's classes: the test set may not reflect new conditions") + ".",
         "Fine-tune pretrained weights and test on images from the target camera / domain."),
        weakest_class(best),
    ]
    return "\n".join(f"{n}. **{title}**: {finding}\n   Mitigation: {mitigation}"
                     for n, (title, finding, mitigation) in enumerate(items, start=1))


def decision(data: ReportData) -> str:
    promotion, best = data.promotion, data.comparison.ranked[0]
    gates = "\n".join(f"| {gate.name} | {'pass' if gate.passed else 'FAIL'} | {gate.detail} |"
                      for gate in promotion.gates)
    if promotion.approved:
        why = (f"`{best.name}` ranks first and passes every gate: version {promotion.version} is "
               f"`{promotion.name}@{CHAMPION}`"
               + (f" (previous champion: version {promotion.champion_before}, kept for rollback)."
                  if promotion.champion_before and promotion.champion_before != promotion.version else "."))
    else:
        failed = ", ".join(gate.name for gate in promotion.gates if not gate.passed)
        why = (f"`{best.name}` ranks first but fails: {failed}. Version {promotion.version} stays `challenger`; "
               f"`{CHAMPION}` is " + (f"still version {promotion.champion}." if promotion.champion else "unset."))
    conditions = [f"load it as `models:/{promotion.name}@{CHAMPION}` only after checking the risks above"
                  if promotion.champion else
                  f"nothing is served: `{promotion.name}@{CHAMPION}` does not exist until a version passes the gates"]
    if data.insights.tie or data.insights.margin_within_noise:
        conditions.append("the ranking is within seed noise: confirm with more seeds before relying on the choice")
    if data.comparison.excluded:
        conditions.append(f"{len(data.comparison.excluded)} experiment(s) could not be ranked (see section 3)")
    return (f"**{promotion.decision}**\n\n| gate | outcome | detail |\n|---|---|---|\n{gates}\n\n"
            f"- Justification: {why}\n- {evidence(data)}\n"
            + "\n".join(f"- Condition: {text}" for text in conditions))


def evidence(data: ReportData) -> str:
    """The paired test against the champion in words: the probability and the gate, or why the margin decided."""
    promotion, params = data.promotion, data.params.promote
    text = paired_text(promotion.paired, promotion.judged_against, params.min_confidence)
    result = promotion.paired
    if result is None:
        return text
    if result.test is None:
        return f"{text} The decision fell back to the margin gate: beat the champion by {params.min_margin}."
    test, sure = result.test, result.test.probability >= params.min_confidence
    text += (f" It is sure enough (probability ≥ {params.min_confidence})." if sure else
             f" That is not sure enough (below {params.min_confidence}): on these test images the two cannot be "
             "told apart with the confidence the gate asks for")
    if not sure:
        needed = test.images_needed
        text += (f"; about {needed} test images would be needed, if the difference stayed as it is." if needed else
                 "; they score the same, so more test images alone would not change that.")
    return text


def next_steps(data: ReportData) -> str:
    short = ["re-run the failed experiment(s) after fixing them (`dvc exp remove <name>`, then `make run`)"
             if data.comparison.excluded else "add seeds to the best configurations in grid.yaml"]
    return "\n".join([
        f"- Short term: {short[0]}; "
        + (f"check `{data.promotion.name}@{CHAMPION}` on a few real images." if data.promotion.champion else
           "train longer or from pretrained weights until a version passes the gates."),
        "- Medium term: more images and epochs, pretrained weights, a larger test split; widen grid.yaml.",
        "- Long term: the shared team stack (MLflow server, PostgreSQL, MinIO), monitoring of the served model, "
        "and retraining when the data drifts.",
    ])


def render(data: ReportData, template: Path, target: Path) -> None:
    """Fill in the template; every placeholder must be known, and the report is written atomically."""
    try:
        text = template.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PipelineError(f"{template}: decision report template not found") from None
    values = {
        "registered_model": data.promotion.name, "baseline": data.baseline[:7], "tracking_uri": data.tracking_uri,
        "primary": data.comparison.primary, "ranking": ", then ".join(data.comparison.rank_by),
        "objectives": objectives(data), "recommended": recommended(data), "per_class": per_class(data.comparison),
        "top3": top3(data),
        "table": table(data.comparison), "insights": insights_text(data), "risks": risks(data),
        "decision": decision(data), "next_steps": next_steps(data),
    }
    try:
        filled = string.Template(text).substitute(values)
    except (KeyError, ValueError) as error:
        raise PipelineError(f"{template}: unknown or malformed placeholder {error}; known: "
                            + ", ".join(f"${{{key}}}" for key in values)) from None
    with atomic_file(target) as staging:
        staging.write_text(filled, encoding="utf-8")
