"""Metrics and reports."""

from .classification import accuracy, evaluate, harmonic_mean, predict_logits
from .reports import csv_table, markdown_table, mean_std, summarize, wide_table

__all__ = [
    "accuracy",
    "csv_table",
    "evaluate",
    "harmonic_mean",
    "markdown_table",
    "wide_table",
    "mean_std",
    "predict_logits",
    "summarize",
]
