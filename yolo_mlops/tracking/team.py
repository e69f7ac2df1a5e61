"""The team's accounts on a tracking server with sign-in (`mlflow server --app-name basic-auth`), through
MLflow's own roles, which the server enforces: `make user NAME=alice ROLE=member` runs
`python -m yolo_mlops.tracking.team alice member` as the server's admin (MLFLOW_TRACKING_USERNAME and
MLFLOW_TRACKING_PASSWORD), and prints a new user's password once.

Each team role is an MLflow role that grants on the project's experiment and registered model:
- viewer: READ on both;
- member: EDIT on the experiment (runs experiments), READ on the registered model;
- maintainer: EDIT on the experiment, MANAGE on the registered model (registers versions, moves and
  deletes its aliases, which the all-or-nothing promotion and rollback need).
MLflow ties every alias to the same grant on the registered model (EDIT sets any alias), so `challenger`
and `champion` cannot be split between roles. The experiment and the registered model are created here
(by the admin) when missing, so that no one else creates them and so manages them."""

import argparse
import os
import secrets
import sys
from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.server.auth.client import AuthServiceClient

from yolo_mlops.core import vocabulary
from yolo_mlops.core.entry import run_main
from yolo_mlops.core.errors import PipelineError
from yolo_mlops.core.params import load_params
from yolo_mlops.tracking.store import (
    PERMISSION_DENIED,
    USERNAME_VARIABLE,
    connect,
    experiment_id,
    public_uri,
    sign_in_error,
)

# MLflow's roles live in a workspace; without MLflow's workspaces everything is in its default one.
WORKSPACE = "default"
EXPERIMENT, REGISTERED_MODEL = "experiment", "registered_model"  # MLflow's resource types
ROLES = {  # role → (permission on the experiment, permission on the registered model)
    vocabulary.VIEWER: ("READ", "READ"),
    vocabulary.MEMBER: ("EDIT", "READ"),
    vocabulary.MAINTAINER: ("EDIT", "MANAGE"),
}
PASSWORD_BYTES = 18  # 24 URL-safe characters; MLflow's minimum is 12


@dataclass(frozen=True)
class Account:
    name: str
    role: str
    password: str | None  # a new one (new user, or reset), None when the user keeps theirs
    created: bool


def _role_ids(auth: AuthServiceClient, experiment: str, model: str) -> dict[str, int]:
    """The team's roles on the server, created when missing, each granting exactly ROLES on the project's
    experiment and registered model (other grants of the roles are left as they are)."""
    existing = {role.name: role for role in auth.list_roles(WORKSPACE)}
    ids = {}
    for name, (on_experiment, on_model) in ROLES.items():
        role = existing.get(name) or auth.create_role(WORKSPACE, name, description=f"yolo-mlops team role: {name}")
        granted = {(grant.resource_type, grant.resource_pattern): grant
                   for grant in auth.list_role_permissions(role.id)}
        for key, permission in (((EXPERIMENT, experiment), on_experiment), ((REGISTERED_MODEL, model), on_model)):
            if key not in granted:
                auth.add_role_permission(role.id, *key, permission)
            elif granted[key].permission != permission:
                auth.update_role_permission(granted[key].id, permission)
        ids[name] = role.id
    return ids


def _project_resources(client: MlflowClient, experiment_name: str, model: str) -> str:
    """The experiment's id; the experiment and the registered model created when missing."""
    exp_id = experiment_id(client, experiment_name)
    if not client.search_registered_models(f"name = '{model}'"):
        client.create_registered_model(model, description=vocabulary.REGISTERED_MODEL_DESCRIPTION)
    return exp_id


def set_account(client: MlflowClient, name: str, role: str, experiment_name: str, model: str,
                reset_password: bool = False) -> Account:
    """Create user `name` with team role `role`, or give an existing user that role (and no other team role)."""
    if role not in ROLES:
        raise PipelineError(f"ROLE={role!r}: choose one of {', '.join(ROLES)}")
    auth = AuthServiceClient(client.tracking_uri)
    role_ids = _role_ids(auth, _project_resources(client, experiment_name, model), model)
    try:
        auth.get_user(name)
        created = False
    except MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        created = True
    password = secrets.token_urlsafe(PASSWORD_BYTES) if created or reset_password else None
    if created:
        auth.create_user(name, password)
    elif password is not None:
        auth.update_user_password(name, password)
    held = {held.name for held in auth.list_user_roles(name) if held.workspace == WORKSPACE}
    for other in held & set(ROLES) - {role}:
        auth.unassign_role(name, role_ids[other])
    if role not in held:
        auth.assign_role(name, role_ids[role])
    return Account(name, role, password, created)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m yolo_mlops.tracking.team", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help="the user's name (4 characters at least)")
    parser.add_argument("role", choices=list(ROLES), help="the user's team role")
    parser.add_argument("--reset-password", action="store_true", help="give an existing user a new password")
    args = parser.parse_args(argv)
    params = load_params()
    client, uri = connect()
    try:
        account = set_account(client, args.name, args.role, params.mlflow.experiment_name,
                              params.promote.registered_model, args.reset_password)
    except MlflowException as error:
        if error.error_code == PERMISSION_DENIED:
            raise PipelineError(f"MLflow server {public_uri(uri)}: user {os.environ.get(USERNAME_VARIABLE)!r} is not "
                                "its admin (403); make user signs in as admin, with .env's "
                                "MLFLOW_AUTH_ADMIN_PASSWORD") from None
        raise (sign_in_error(error, "") or PipelineError(f"MLflow at {public_uri(uri)}: {error.message}")) from None
    where = f"MLflow server {public_uri(uri)}"
    print(f"user {account.name}: {'created' if account.created else 'updated'}, role {account.role} on {where} "
          f"(experiment {params.mlflow.experiment_name!r}, registered model {params.promote.registered_model!r})")
    if account.password is not None:
        print(f"password (shown once, hand it over privately): {account.password}")
        print(f"the user sets {USERNAME_VARIABLE}={account.name} and MLFLOW_TRACKING_PASSWORD in their shell")
    else:
        print("password unchanged (--reset-password, or make user ... RESET=1, sets a new one)")
    sys.stdout.flush()


if __name__ == "__main__":
    run_main(main)
