"""Tracking with MLflow: the store, what a run carries, exactly-once logging (the `log` stage), the model."""
