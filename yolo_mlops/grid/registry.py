"""Promotion in the MLflow Model Registry with aliases: the selected run's model becomes a version
with alias `challenger`, and `champion` only when it passes the gates (beating the champion: a paired
test on the same test images, grid/resampling.py); the version's description says which, with the
test interval, the paired test, the gates and the decision report. All or nothing: when the registry
fails half-way, the aliases are put back as they were."""

import math
from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from yolo_mlops.core import vocabulary
from yolo_mlops.core.errors import PipelineError
from yolo_mlops.core.params import PromoteParams
from yolo_mlops.core.paths import DECISION_FILE
from yolo_mlops.core.vocabulary import CHALLENGER, CHAMPION, MAINTAINER, PREVIOUS_CHAMPION_TAG, STAGE_TAG
from yolo_mlops.grid.ranking import RunSummary
from yolo_mlops.grid.resampling import TESTED, Paired, paired
from yolo_mlops.tracking.model import model_id
from yolo_mlops.tracking.store import sign_in_error

METRIC_TAGS = tuple(f"{split}.{metric}"
                    for split in vocabulary.REPORTED_SPLITS for metric in vocabulary.REPORTED_METRICS)


@dataclass(frozen=True)
class Gate:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class Promotion:
    name: str
    version: str
    created: bool  # a new version (False: the run was registered before)
    approved: bool
    gates: list[Gate]
    champion_before: str | None
    champion: str | None
    paired: Paired | None = None  # against the champion it was judged against; None without one
    judged_against: str | None = None  # that champion's version

    @property
    def decision(self) -> str:
        return "Approve" if self.approved else "Reject"


def version_tags(run: RunSummary) -> dict[str, str]:
    """Provenance carried by the version: run, params, metrics, dataset, code, DVC experiment."""
    tags = {vocabulary.RUN_ID_TAG: run.run_id, vocabulary.EXP_NAME_TAG: run.name}
    tags |= {key: run.params[key] for key in (vocabulary.DATASET_TAG, vocabulary.COMMIT_TAG) if key in run.params}
    tags |= {key: run.params[key] for key in vocabulary.HYPERPARAMETERS if key in run.params}
    tags |= {key: repr(run.metrics[key]) for key in METRIC_TAGS if key in run.metrics}
    return tags


def report_uri(run_id: str) -> str:
    """Where the decision report of a promotion is logged: under `decision/` of the promoted run."""
    return f"runs:/{run_id}/{vocabulary.DECISION_ARTIFACTS}/{DECISION_FILE.name}"


def interval_text(run: RunSummary, metric: str = TESTED) -> str:
    """`0.3100 (95 % interval 0.2000 to 0.4200)`, or the point alone when the run records no interval."""
    value, low, high = run.interval(metric)
    if math.isnan(low) or math.isnan(high):  # evaluated before intervals were recorded
        return f"{value:.4f} (no interval recorded)"
    return f"{value:.4f} (95 % interval {low:.4f} to {high:.4f})"


def paired_text(result: Paired | None, champion: str | None, min_confidence: float) -> str:
    """One sentence on the paired test against the champion, or why there is none."""
    if result is None:
        return "No champion to compare with yet: no paired test."
    if result.test is None:
        return f"No paired test against champion version {champion}: {result.why_not}."
    test = result.test
    return (f"Paired test against champion version {champion} on the same {result.images} test images "
            f"({result.resamples} resamples): probability {test.probability:.3f} that this version is better "
            f"(the gate asks for {min_confidence}); difference in {TESTED} {test.difference:+.4f}, 95 % interval "
            f"{test.low:+.4f} to {test.high:+.4f}.")


def description(promotion: Promotion, run: RunSummary, replaced: str | None, experiment_id: str,
                min_confidence: float) -> str:
    """The version's description in the MLflow UI (Markdown): the decision (`replaced`: the champion it
    replaced, if any), the test interval, the paired test, the gates, where the decision report is."""
    run_id = run.run_id
    if promotion.approved:
        outcome = f"promoted to `{CHAMPION}`" + (f", replacing version {replaced}" if replaced else "")
    else:
        outcome = (f"`{CHALLENGER}` only; `{CHAMPION}` stayed "
                   + (f"version {promotion.champion}" if promotion.champion else "unset"))
    rows = "\n".join(f"| {gate.name} | {'pass' if gate.passed else 'FAIL'} | {gate.detail} |"
                     for gate in promotion.gates)
    path = f"{vocabulary.DECISION_ARTIFACTS}/{DECISION_FILE.name}"
    images = run.metric("data.test_images")
    evidence = (f"{TESTED} {interval_text(run)}" + ("" if math.isnan(images) else f" over {int(images)} test images")
                + ". " + paired_text(promotion.paired, promotion.judged_against, min_confidence))
    return (f"**{promotion.decision}**: {outcome}.\n\n{evidence}\n\n| gate | outcome | detail |\n|---|---|---|\n"
            f"{rows}\n\n"
            f"Decision report: [{path}](#/experiments/{experiment_id}/runs/{run_id}/artifacts/{path}) of the run "
            f"(`{report_uri(run_id)}`), written to `{DECISION_FILE.as_posix()}` in the project.")


def gates(candidate: RunSummary, champion: ModelVersion | None, params: PromoteParams,
          evidence: Paired | None = None) -> list[Gate]:
    """The checks a challenger must pass to become champion: beating the champion is the paired test's
    probability against `min_confidence` when `evidence` has one, else the unpaired margin."""
    test_map, recall = candidate.metrics.get("test.mAP50-95", float("nan")), candidate.metrics.get("test.recall",
                                                                                                  float("nan"))
    result = [
        Gate("min test mAP50-95", test_map >= params.min_test_map50_95,
             f"test mAP50-95 {test_map:.4f} vs minimum {params.min_test_map50_95:.4f}"),
        Gate("min test recall", recall >= params.min_test_recall,
             f"test recall {recall:.4f} vs minimum {params.min_test_recall:.4f}"),
    ]
    if champion is None:
        return [*result, Gate("beats champion", True, "no champion yet")]
    if evidence is not None and evidence.test is not None:
        test = evidence.test
        return [*result, Gate("beats champion", test.probability >= params.min_confidence,
                              f"paired test on the same {evidence.images} test images: probability "
                              f"{test.probability:.3f} that {TESTED} beats champion version {champion.version}'s vs "
                              f"minimum {params.min_confidence}; difference {test.difference:+.4f} (95 % interval "
                              f"{test.low:+.4f} to {test.high:+.4f})")]
    unpaired = f"no paired test ({evidence.why_not}): " if evidence is not None else ""
    dataset = candidate.params.get(vocabulary.DATASET_TAG)
    if evidence is None and champion.tags.get(vocabulary.DATASET_TAG) != dataset:
        unpaired = (f"champion version {champion.version} was tested on other images (dataset md5 "
                    f"{champion.tags.get(vocabulary.DATASET_TAG)} vs {dataset}): ")
    best = float(champion.tags.get("test.mAP50-95", "nan"))
    return [*result, Gate("beats champion", test_map >= best + params.min_margin,
                          f"{unpaired}test mAP50-95 {test_map:.4f} vs champion version {champion.version} {best:.4f} "
                          f"+ margin {params.min_margin:.4f}")]


def aliases(client: MlflowClient, name: str) -> dict[str, str]:
    try:
        return {alias: str(version) for alias, version in client.get_registered_model(name).aliases.items()}
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return {}
        raise


def _champion(client: MlflowClient, name: str, current: dict[str, str]) -> ModelVersion | None:
    return client.get_model_version(name, current[CHAMPION]) if CHAMPION in current else None


def _set_alias(client: MlflowClient, name: str, alias: str, version: str | None, current: dict[str, str]) -> None:
    if current.get(alias) == version:
        return
    if version is None:
        client.delete_registered_model_alias(name, alias)
    else:
        client.set_registered_model_alias(name, alias, version)


def mirror_stages(client: MlflowClient, name: str) -> None:
    """Tag each version Production / Staging / Archived from the aliases (stages are deprecated)."""
    current = aliases(client, name)
    for version in client.search_model_versions(f"name = '{name}'"):
        number = str(version.version)
        stage = ("Production" if current.get(CHAMPION) == number
                 else "Staging" if current.get(CHALLENGER) == number else "Archived")
        if version.tags.get(STAGE_TAG) != stage:
            client.set_model_version_tag(name, number, STAGE_TAG, stage)


def _model_id(client: MlflowClient, run_id: str) -> str:
    found = model_id(client.get_run(run_id))
    if found is None:
        raise PipelineError(f"run {run_id} has no logged MLflow model to register")
    return found


def _restore(client: MlflowClient, name: str, before: dict[str, str], created: str | None) -> str:
    """Put the aliases back as they were; remove a version this attempt created."""
    after = aliases(client, name)
    for alias in (CHALLENGER, CHAMPION):
        _set_alias(client, name, alias, before.get(alias), after)
    if created is not None:
        client.delete_model_version(name, created)
    mirror_stages(client, name)
    state = ", ".join(f"{alias} → version {version}" for alias, version in sorted(before.items())) or "no alias"
    return state + (f"; version {created} removed" if created else "")


def promote(client: MlflowClient, run: RunSummary, params: PromoteParams) -> Promotion:
    """Register `run`'s model (once), alias it challenger, and champion if the gates pass."""
    name = params.registered_model
    before = aliases(client, name)
    created: str | None = None
    step = "reading the registry"
    try:
        existing = client.search_model_versions(f"name = '{name}' and run_id = '{run.run_id}'")
        if existing:
            version = str(max(int(v.version) for v in existing))
        else:
            step = "registering the model"
            if not before and not client.search_registered_models(f"name = '{name}'"):
                client.create_registered_model(name, description=vocabulary.REGISTERED_MODEL_DESCRIPTION)
            model_id = _model_id(client, run.run_id)
            version = client.create_model_version(name, f"models:/{model_id}", run_id=run.run_id,
                                                  tags=version_tags(run), model_id=model_id).version
            version = str(version)
            created = version
        champion = _champion(client, name, before)
        if champion is not None and str(champion.version) == version:  # promoted before: same gates as then
            previous = champion.tags.get(PREVIOUS_CHAMPION_TAG)
            champion = client.get_model_version(name, previous) if previous else None
        step = "comparing with the champion on the same test images"
        evidence = None if champion is None else paired(client, run, champion.run_id,
                                                        champion.tags.get(vocabulary.DATASET_TAG),
                                                        str(champion.version))
        results = gates(run, champion, params, evidence)
        approved = all(gate.passed for gate in results)
        step = f"setting alias {CHALLENGER}"
        _set_alias(client, name, CHALLENGER, version, before)
        if approved and before.get(CHAMPION) != version:
            step = f"setting alias {CHAMPION}"
            if champion is not None:
                client.set_model_version_tag(name, version, PREVIOUS_CHAMPION_TAG, str(champion.version))
            _set_alias(client, name, CHAMPION, version, before)
        step = f"mirroring the aliases as {STAGE_TAG} tags"
        mirror_stages(client, name)
        step = "describing the version"
        promotion = Promotion(name, version, created is not None, approved, results, before.get(CHAMPION),
                              version if approved else before.get(CHAMPION), evidence,
                              None if champion is None else str(champion.version))
        replaced = str(champion.version) if approved and champion is not None else None
        text = description(promotion, run, replaced, client.get_run(run.run_id).info.experiment_id,
                           params.min_confidence)
        if client.get_model_version(name, version).description != text:
            client.update_model_version(name, version, description=text)
    except PipelineError:
        raise
    except Exception as error:
        refused = sign_in_error(error, f"EDIT on registered model {name!r}", MAINTAINER, client.tracking_uri)
        if refused is not None and created is None and aliases(client, name) == before:
            raise PipelineError(f"promotion of run {run.run_id} refused while {step}: {refused}. The registry is as "
                                "it was; the comparison (reports/) stays.") from None
        try:
            restored = _restore(client, name, before, created)
        except Exception as again:
            raise PipelineError(
                f"promotion of run {run.run_id} to {name!r} failed while {step} ({type(error).__name__}: {error}), "
                f"and restoring the aliases failed too ({type(again).__name__}: {again}). Check them in the MLflow UI "
                f"(Models → {name} → Aliases) and set them back by hand; they were: {before or 'none'}"
            ) from None
        raise PipelineError(
            f"promotion of run {run.run_id} to {name!r} failed while {step} ({type(error).__name__}: {error}). "
            f"Nothing changed: the registry is as before ({restored})."
        ) from None
    return promotion


def rollback(client: MlflowClient, name: str, to_version: str | None = None) -> tuple[str, str]:
    """Move `champion` back to the previous champion (or to `to_version`); returns (from, to)."""
    current = aliases(client, name)
    if not current and not client.search_registered_models(f"name = '{name}'"):
        raise PipelineError(f"promote.registered_model: no registered model {name!r} in the registry")
    if CHAMPION not in current:
        raise PipelineError(f"registered model {name!r} has no {CHAMPION} to roll back")
    champion = client.get_model_version(name, current[CHAMPION])
    previous = str(champion.version)
    target = to_version or champion.tags.get(PREVIOUS_CHAMPION_TAG)
    if not target:
        raise PipelineError(f"{name} version {previous} is the first champion: nothing to roll back to "
                            "(name a version with --to)")
    try:
        client.get_model_version(name, target)
    except MlflowException:
        raise PipelineError(f"{name} has no version {target}") from None
    try:
        client.set_registered_model_alias(name, CHAMPION, target)
    except MlflowException as error:
        refused = sign_in_error(error, f"EDIT on registered model {name!r}", MAINTAINER, client.tracking_uri)
        if refused is None:
            raise
        raise PipelineError(f"rollback refused: {refused}. The registry is as it was.") from None
    mirror_stages(client, name)
    return previous, target
