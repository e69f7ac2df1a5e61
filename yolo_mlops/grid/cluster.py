"""The grid on a Ray cluster (`python -m yolo_mlops.grid run --ray <address>`): every missing grid
point is one Ray task that clones the project at the grid's baseline commit from the git remote,
runs `dvc exp run` with the point's `-S` values (data and run-cache hits pulled from the DVC remote,
runs sent to the shared MLflow server) and pushes the experiment (`dvc exp push`). The driver then
pulls the experiments (`dvc exp pull`), and the local path's sync, comparison and promotion follow.

What cannot work across machines is refused before anything runs."""

import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import ray
from ray._private.services import canonicalize_bootstrap_address_or_die
from ray._raylet import Config
from ray.exceptions import AuthenticationError

import yolo_mlops
from yolo_mlops.core import vocabulary
from yolo_mlops.core.errors import PipelineError
from yolo_mlops.core.git import git
from yolo_mlops.core.paths import DVC_LOCAL_CONFIG
from yolo_mlops.core.tempdir import stage_tempdir
from yolo_mlops.data.source import is_url
from yolo_mlops.grid import experiments, points
from yolo_mlops.grid.commands import Plan, check_before_queueing
from yolo_mlops.grid.experiments import DvcExperiment

GIT_REMOTE = "origin"  # the git remote the workers clone from and push the experiments to (DVC's default)
MAX_RETRIES = 2  # Ray runs a task again elsewhere when its node or worker process dies, this many times
CONNECT_TIMEOUT_S = 5
NOTHING_RAN = "Nothing was run."
# Ray's token authentication (Ray 2.52+): its mode, and the token itself or a file that holds it.
AUTH_MODE_VARIABLE, TOKEN_VARIABLE, TOKEN_PATH_VARIABLE = "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"
BACKEND_LOG_LEVEL = "RAY_BACKEND_LOG_LEVEL"  # of Ray's own (C++) processes and clients
DEFAULT_TOKEN_FILE = Path.home() / ".ray" / "auth_token"  # where `ray get-auth-token --generate` writes it
NEEDS_TOKEN = (f"set {TOKEN_VARIABLE} to the cluster's token (the head's .env RAY_AUTH_TOKEN), or "
               f"{TOKEN_PATH_VARIABLE} to a file that holds it; `make run RAY=...` takes it from .env")


@dataclass(frozen=True)
class Task:
    """One grid point to run on the cluster: its experiment name (`points.experiment_name`), `-S` arguments and
    the resources it reserves."""

    name: str
    point: dict[str, Any]
    set_args: list[str]
    num_gpus: int


@dataclass(frozen=True)
class Fanout:
    """Everything the tasks need, checked: the git remote's URL, the baseline, the tracking server."""

    git_url: str
    baseline: str
    tracking_uri: str
    tasks: list[Task]
    params: dict[str, dict[str, Any]]  # experiment name → the point's params.yaml values, flat


@dataclass(frozen=True)
class PointResult:
    """What one task did: where it ran and, when the experiment failed, why."""

    name: str
    node_id: str
    node_ip: str
    error: str | None = None

    @property
    def node(self) -> str:
        return f"node {self.node_id[:8]} ({self.node_ip})" if self.node_id else "no node"


def gpus_needed(device: str, cluster_gpus: float) -> int:
    """The GPUs a point's task reserves: those `train.device` lists (`0`, `0,1`), one for `auto` on a
    cluster with GPUs; none for `cpu`, `mps` or `auto` without GPUs (then it reserves one CPU)."""
    if device in ("cpu", "mps") or (device == "auto" and not cluster_gpus):
        return 0
    return 1 if device == "auto" else len(device.split(","))


def refuse_embedded_store(tracking_uri: str) -> None:
    """The workers log to the driver's tracking store: an embedded one is refused first, before the grid is
    planned (which may download COCO128)."""
    if urlparse(tracking_uri).scheme not in ("http", "https"):
        raise PipelineError(
            "the embedded SQLite store cannot be shared with Ray workers: set MLFLOW_TRACKING_URI to the team's "
            f"MLflow server (make up). {NOTHING_RAN}")


def refuse_unshared(root: Path, tracking_uri: str) -> str:
    """Refuse what the workers cannot share with this machine; returns the git remote's URL."""
    refuse_embedded_store(tracking_uri)
    try:
        url = git(root, "remote", "get-url", GIT_REMOTE).strip()
    except PipelineError:
        raise PipelineError(
            f"no git remote {GIT_REMOTE!r}: the Ray workers clone the project from it and push their experiments "
            f"to it; add the team's repository (git remote add {GIT_REMOTE} <url>) and push. {NOTHING_RAN}") from None
    git(root, "fetch", "--quiet", GIT_REMOTE)
    if not git(root, "for-each-ref", "--contains", "HEAD", "--format=%(refname)", f"refs/remotes/{GIT_REMOTE}"):
        raise PipelineError(
            f"commit {git(root, 'rev-parse', '--short', 'HEAD').strip()} (the grid's baseline) is not on "
            f"{GIT_REMOTE}, so the Ray workers cannot check it out: push it (git push {GIT_REMOTE}). {NOTHING_RAN}")
    remote = experiments.default_remote(root)
    if remote is None:
        raise PipelineError(
            "no default DVC remote: the Ray workers take data and run-cache hits from it and push their outputs to "
            f"it; make the team's MinIO bucket the default (make remote). {NOTHING_RAN}")
    name, remote_url = remote
    if "://" not in remote_url or urlparse(remote_url).scheme == "file":
        raise PipelineError(
            f"DVC remote {name!r} is a folder on this machine ({remote_url}), which the Ray workers cannot reach: "
            f"make the team's MinIO bucket the default remote (make remote). {NOTHING_RAN}")
    return url


def refuse_local_source(source: str) -> None:
    """A relative COCO128 path resolves inside each worker's own clone, where it is not."""
    if not is_url(source) and not Path(source).expanduser().is_absolute():
        raise PipelineError(
            f"prepare.source: {source} is relative to this clone, and the Ray workers' clones lack it: give a URL "
            f"or an absolute path that every machine has. {NOTHING_RAN}")


def ray_token_source() -> str:
    """Where this driver's Ray token comes from (Ray's own variables, or the file `ray get-auth-token
    --generate` writes), refused when there is none: the project's Ray cluster runs in token mode
    (`make ray-head`), and a driver without the token would only be refused after Ray's retries.
    RAY_AUTH_MODE=disabled opts out, for a cluster started without a token on purpose."""
    mode = os.environ.get(AUTH_MODE_VARIABLE, "").strip().lower()
    if mode == "disabled":
        return "none (RAY_AUTH_MODE=disabled)"
    if mode not in ("", "token"):
        raise PipelineError(f"{AUTH_MODE_VARIABLE}={mode!r}: set it to token (or disabled). {NOTHING_RAN}")
    if os.environ.get(TOKEN_VARIABLE, "").strip():
        source = TOKEN_VARIABLE
    elif os.environ.get(TOKEN_PATH_VARIABLE, "").strip():
        source = f"{TOKEN_PATH_VARIABLE}={os.environ[TOKEN_PATH_VARIABLE]}"
        if not Path(os.environ[TOKEN_PATH_VARIABLE]).expanduser().is_file():
            raise PipelineError(f"{source}: no such file; give the file that holds the cluster's token. {NOTHING_RAN}")
    elif DEFAULT_TOKEN_FILE.is_file():
        source = str(DEFAULT_TOKEN_FILE)
    else:
        raise PipelineError(f"no Ray token: {NEEDS_TOKEN}. {NOTHING_RAN}")
    if mode != "token":  # a token given, the mode not: token mode, for this process (Ray caches its config)
        os.environ[AUTH_MODE_VARIABLE] = "token"
        Config.initialize("")
    return source


def connect(address: str) -> dict[str, float]:
    """Join the Ray cluster at `address` (`auto`: the one `ray start` started here; `host:port`;
    `ray://host:port`) with this driver's token (`ray_token_source`); returns its resources. An address
    nobody listens on is refused within seconds (Ray itself waits minutes)."""
    try:
        gcs = address if address.startswith("ray://") else canonicalize_bootstrap_address_or_die(address)
        host, _, port = gcs.removeprefix("ray://").rpartition(":")
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except (OSError, ValueError) as error:
        raise no_cluster(address, str(error).splitlines()[0]) from None
    source = ray_token_source()
    try:
        os.environ.setdefault(BACKEND_LOG_LEVEL, "fatal")  # not Ray's retries, each a line, before the refusal
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    except AuthenticationError as error:
        raise PipelineError(f"Ray cluster at {address}: {error.message.split('.')[0]}: {NEEDS_TOKEN}. "
                            f"{NOTHING_RAN}") from None
    except ConnectionError as error:  # the port answers, Ray's handshake does not: the token, most often
        raise PipelineError(
            f"Ray cluster at {address} refused this driver ({str(error).splitlines()[0]}) with the token from "
            f"{source}: {NEEDS_TOKEN}. {NOTHING_RAN}") from None
    return ray.cluster_resources()


def no_cluster(address: str, reason: str) -> PipelineError:
    """The refusal of an address where no Ray cluster answers, saying how to start one."""
    return PipelineError(
        f"no Ray cluster at {address} ({reason}): start one (ray start --head on one machine, ray start "
        f"--address=<head>:6379 on each GPU machine; make ray-head, make ray-worker), or give its address "
        f"(--ray, RAY_ADDRESS). {NOTHING_RAN}")


def plan_fanout(root: Path, plan: Plan, tracking_uri: str, address: str) -> tuple[Fanout, dict[str, float]]:
    """Every refusal, then the cluster: the tasks of the missing points and the cluster's resources."""
    git_url = refuse_unshared(root, tracking_uri)
    checked = check_before_queueing(plan.missing, plan.overrides, here=False)
    for source in dict.fromkeys(params.prepare.source for params in checked):
        refuse_local_source(source)
    resources = connect(address) if plan.missing else {}
    tasks, flat = [], {}
    for point, params in zip(plan.missing, checked, strict=True):
        gpus = gpus_needed(params.train.device, resources.get("GPU", 0))
        if gpus > resources.get("GPU", 0):
            raise PipelineError(
                f"train.device={params.train.device} asks for {gpus} CUDA GPU(s), and the Ray cluster at {address} "
                f"has {resources.get('GPU', 0):g}: add GPU machines (ray start --address=...) or set train.device. "
                f"{NOTHING_RAN}")
        name = points.experiment_name(plan.baseline, point, plan.overrides)
        tasks.append(Task(name, point, points.set_args(point | plan.overrides), gpus))
        flat[name] = params.flat()
    return Fanout(git_url, plan.baseline, tracking_uri, tasks, flat), resources


def run(fanout: Fanout) -> Iterator[PointResult]:
    """Submit every task, then yield their results as they finish. A task whose node died is run again
    elsewhere by Ray (MAX_RETRIES); one that still could not finish is a failed point."""
    remote = ray.remote(run_point)
    pending = {remote.options(num_cpus=1, num_gpus=task.num_gpus, max_retries=MAX_RETRIES).remote(
        fanout.git_url, fanout.baseline, task.name, task.set_args, fanout.tracking_uri): task.name
        for task in fanout.tasks}
    while pending:
        (ref,), _ = ray.wait(list(pending), num_returns=1)
        name = pending.pop(ref)
        try:
            yield ray.get(ref)
        except ray.exceptions.RayError as error:
            yield PointResult(name, "", "", f"the Ray task did not finish: {str(error).splitlines()[0]}")


def pull(root: Path, results: list[PointResult]) -> list[str]:
    """`dvc exp pull` the experiments that ran, so that `dvc exp show` here lists them; returns their names."""
    done = [result.name for result in results if result.error is None]
    if done:
        experiments.pull_experiments(root, GIT_REMOTE, done)
    return done


def node_tags(results: list[PointResult]) -> dict[str, dict[str, str]]:
    """The MLflow run tags naming the node each point ran on, by experiment name."""
    return {result.name: {vocabulary.RAY_NODE_TAG: result.node_id, vocabulary.RAY_NODE_IP_TAG: result.node_ip}
            for result in results if result.node_id}


def failed_points(fanout: Fanout, results: list[PointResult]) -> list[DvcExperiment]:
    """The points that failed on the cluster, as failed experiments (DVC keeps none of a failed `dvc exp run`)."""
    return [DvcExperiment(name=result.name, rev="", baseline_rev=fanout.baseline, params=fanout.params[result.name],
                          metrics={}, failed=True, error=result.error)
            for result in results if result.error is not None]


# --- On the worker -----------------------------------------------------------------------------------------------

def _die_with_parent() -> None:
    """Linux: the child gets SIGKILL when the Ray worker that started it dies (its node died), so that no
    orphaned `dvc exp run` goes on beside the task's retry."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def worker_clone() -> Path:
    """The project clone this worker runs from (`make ray-worker`): its .dvc/config.local holds the DVC
    remote's credentials (`make remote`), which no task receives over the network."""
    return Path(yolo_mlops.__file__).resolve().parents[1]


def run_point(git_url: str, baseline: str, name: str, set_args: list[str], tracking_uri: str) -> PointResult:
    """The Ray task of one grid point: clone, pull, `dvc exp run`, `dvc exp push`, in a folder of its own."""
    context = ray.get_runtime_context()
    node = {"node_id": context.get_node_id(), "node_ip": ray.util.get_node_ip_address()}
    # In the worker's clone, not /tmp: a retry of this point on this machine (its node died) empties it first.
    # Each attempt clones into a folder of its own: stage processes orphaned by a dead node's `dvc` never
    # write into the retry's clone.
    with stage_tempdir(f"ray-{name}", worker_clone()) as workdir:
        project = Path(tempfile.mkdtemp(dir=workdir)) / "project"
        try:
            git(project.parent, "clone", "--quiet", git_url, str(project))
            git(project, "checkout", "--quiet", "--detach", baseline)
            for key in ("user.name", "user.email"):  # DVC commits the experiment: as whoever runs the worker
                if not git(project, "config", "--default", "", key).strip():
                    git(project, "config", key, git(worker_clone(), "config", key).strip())
            if (worker_clone() / DVC_LOCAL_CONFIG).is_file():
                shutil.copy2(worker_clone() / DVC_LOCAL_CONFIG, project / DVC_LOCAL_CONFIG)
            if name in experiments.remote_experiments(project, GIT_REMOTE, baseline):
                return PointResult(name, **node)  # an earlier attempt pushed it, then its node died
            experiments.dvc(project, "pull", "--run-cache", "--allow-missing")
            env = {key: value for key, value in os.environ.items() if not key.startswith("DVC_")}
            done = subprocess.run(["dvc", "exp", "run", "--pull", "--name", name, *set_args], cwd=project,
                                  env=env | {"MLFLOW_TRACKING_URI": tracking_uri}, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, preexec_fn=_die_with_parent)
            if done.returncode != 0:
                reason = experiments.error_line(done.stdout) or done.stdout.strip()[-500:]
                return PointResult(name, **node, error=reason)
            experiments.dvc(project, "exp", "push", "--run-cache", GIT_REMOTE, name)
            return PointResult(name, **node)
        except PipelineError as error:
            return PointResult(name, **node, error=str(error)[-1000:])
