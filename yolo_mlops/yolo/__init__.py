"""The Ultralytics adapter: the `train` and `evaluate` stages' work with YOLO."""
