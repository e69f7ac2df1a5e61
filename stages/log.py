"""DVC stage `log`: forward the experiment's params, metrics, plots and model to MLflow."""

from yolo_mlops.core.atomic import write_json
from yolo_mlops.core.entry import run_main
from yolo_mlops.core.params import load_params
from yolo_mlops.core.paths import MLFLOW_RUN_FILE
from yolo_mlops.core.vocabulary import RUN_LINK_ID
from yolo_mlops.tracking.record import collect_record
from yolo_mlops.tracking.run import log_record
from yolo_mlops.tracking.store import public_uri, tracking_uri


def main() -> None:
    params = load_params()
    record = collect_record(params)
    logged = log_record(record, params.mlflow.experiment_name)
    write_json(MLFLOW_RUN_FILE, {
        "experiment_name": params.mlflow.experiment_name,
        "experiment_id": logged.experiment_id,
        RUN_LINK_ID: logged.run_id,
        "run_name": logged.run_name,
        "fingerprint": record.header.fingerprint,
    })
    print(f"log: {logged.action} MLflow run {logged.run_id} ({logged.run_name}) in experiment "
          f"{params.mlflow.experiment_name!r} at {public_uri(tracking_uri())}")


if __name__ == "__main__":
    run_main(main)
