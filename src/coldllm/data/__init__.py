"""Data: readers for raw files, the cold-start split, the prepared dataset and BPR sampling."""

from .dataset import ColdStartData, build_dataset, load_dataset
from .readers import DataError, RawData, read_raw
from .sampling import BPRSampler
from .split import cold_start_split

__all__ = [
    "BPRSampler",
    "ColdStartData",
    "DataError",
    "RawData",
    "build_dataset",
    "cold_start_split",
    "load_dataset",
    "read_raw",
]
