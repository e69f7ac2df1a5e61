"""The data stage (`prepare`): a detection source (COCO128 by default) → the dataset of the kept classes, split."""
