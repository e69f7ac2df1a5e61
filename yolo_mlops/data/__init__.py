"""The data stage (`prepare`): COCO128 → the one-class person dataset, split 40 / 10 / 10."""
