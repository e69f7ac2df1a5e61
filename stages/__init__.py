"""DVC stage entry points: `python -m stages.<name>` from the project root (see dvc.yaml). Each one runs
forked from the warm process when there is one (core/warm.py), before it imports anything heavy."""

from yolo_mlops.core.warm import hand_over

hand_over(__name__)
