"""Runs: typed run configs and the protocols, all on one per-seed loop (:func:`run_seeds`)."""

from .classification import Classification, ClassificationRun, DataConfig, run_classification
from .config import BackboneConfig, RunConfig, TrainOverrides, train_overrides
from .czsl import Compositional, CZSLData, CZSLRun, run_czsl
from .loop import Protocol, prepare_out_dir, run_seeds, write_config, write_tables
from .multitask import MultiTask, MultiTaskData, MultiTaskRun, TaskData, run_multitask

__all__ = [
    "BackboneConfig",
    "CZSLData",
    "CZSLRun",
    "Classification",
    "ClassificationRun",
    "Compositional",
    "DataConfig",
    "MultiTask",
    "MultiTaskData",
    "MultiTaskRun",
    "TaskData",
    "Protocol",
    "RunConfig",
    "TrainOverrides",
    "prepare_out_dir",
    "run_classification",
    "run_czsl",
    "run_multitask",
    "run_seeds",
    "train_overrides",
    "write_config",
    "write_tables",
]
