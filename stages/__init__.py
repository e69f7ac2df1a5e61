"""DVC stage entry points: `python -m stages.<name>` from the project root (see dvc.yaml)."""
