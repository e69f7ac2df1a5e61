"""What the user reads when tracking fails: results are safe, and what to check."""

import os

from yolo_mlops.core.paths import EVAL_METRICS_FILE, MODELS_DIR, PLOTS_DIR

STORE_IS_BACK = "the tracking store is back"


def safe_results(retry: str = STORE_IS_BACK) -> str:
    """Nothing is lost, and when to run again (`retry`: once what is true)."""
    return (f"Nothing is lost: the results stay in {MODELS_DIR}/, {PLOTS_DIR}/ and {EVAL_METRICS_FILE.parent}/. "
            f"Once {retry}, run `dvc repro` again: only the log stage runs, and it completes the same MLflow run "
            "instead of adding one.")


SAFE_RESULTS = safe_results()


def artifact_store_hint(error: Exception) -> str:
    """What to check when artifacts could not be stored, named by the variables that configure it."""
    text = str(error)
    if "mlflow-artifacts" in text and "500" in text:  # the server proxies artifacts and could not store them
        return ("The tracking server could not write to its artifact store: check the server's "
                "MLFLOW_S3_ENDPOINT_URL, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, and that its bucket exists "
                "(team stack: `docker compose logs mlflow`). ")
    if type(error).__module__.split(".")[0] in ("botocore", "boto3"):  # this client uploads to S3 itself
        endpoint = os.environ.get("MLFLOW_S3_ENDPOINT_URL") or "AWS S3"
        return (f"Direct upload to S3 at {endpoint} failed: check MLFLOW_S3_ENDPOINT_URL, AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY. ")
    return ""
