#!/bin/sh
# The MLflow server's entry point (docker/mlflow/Dockerfile): writes the configuration of MLflow's
# basic-auth app to MLFLOW_AUTH_CONFIG_PATH from the environment, readable by this user only, then
# runs the command (`mlflow server --app-name basic-auth ...`). The user store lives in
# MLFLOW_AUTH_DATABASE_URI (the stack's PostgreSQL); the admin's password comes from
# MLFLOW_AUTH_ADMIN_PASSWORD, which MLflow reads itself. A signed-in user without a grant gets
# NO_PERMISSIONS: the team's roles (`make user`) grant what each may do (docs/security.md).
set -eu
: "${MLFLOW_AUTH_CONFIG_PATH:?is not set}" "${MLFLOW_AUTH_DATABASE_URI:?is not set}"
: "${MLFLOW_AUTH_ADMIN_PASSWORD:?is not set}" "${MLFLOW_FLASK_SERVER_SECRET_KEY:?is not set}"
umask 077
# configparser reads % as the start of an interpolation: a URL-encoded password keeps its %.
database_uri=$(printf '%s' "$MLFLOW_AUTH_DATABASE_URI" | sed 's/%/%%/g')
cat > "$MLFLOW_AUTH_CONFIG_PATH" <<INI
[mlflow]
default_permission = NO_PERMISSIONS
database_uri = $database_uri
admin_username = admin
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
exec "$@"
