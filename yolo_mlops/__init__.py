"""Track, compare and promote tiny YOLO detectors (COCO128 persons by default) with DVC and MLflow."""
