"""Data stage: readers for each input format, the shared protocol, the prepared Dataset."""

from sidrec.data.dataset import PAD, Dataset, pad_histories
from sidrec.data.prepare import PrepareConfig, load_dataset, prepare, summary
from sidrec.data.stats import dataset_stats, format_stats

__all__ = ["PAD", "Dataset", "PrepareConfig", "dataset_stats", "format_stats", "load_dataset",
           "pad_histories", "prepare", "summary"]
