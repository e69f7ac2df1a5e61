"""Tracking with MLflow: the store, what a run carries, exactly-once logging (the `log` stage), the model.
A stage's forwarder (`python -m yolo_mlops.tracking.forwarder`) runs forked from the warm process when
there is one (core/warm.py), before it imports MLflow."""

from yolo_mlops.core.warm import hand_over

hand_over(__name__)
