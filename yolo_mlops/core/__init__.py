"""The shared core: params.yaml, every path, errors, atomic writes, git, and the DVC ↔ MLflow vocabulary."""
