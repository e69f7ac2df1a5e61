"""Track, compare and promote tiny YOLO person detectors with DVC and MLflow."""
