"""Datasets and their sampling: few-shot subsets and base/new class splits (:mod:`.sampling`)."""

from .images import DataError, LabeledImages, Sample, image_folder, load_rgb, split_json, write_split_json
from .sampling import base_new_labels, base_new_split, few_shot, few_shot_indices

__all__ = [
    "DataError",
    "LabeledImages",
    "Sample",
    "base_new_labels",
    "base_new_split",
    "few_shot",
    "few_shot_indices",
    "image_folder",
    "load_rgb",
    "split_json",
    "write_split_json",
]
