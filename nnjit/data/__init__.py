"""Datasets: the IDX format, named datasets, downloads."""
from .datasets import DATASETS, Dataset, DatasetInfo, dataset_info, load_dataset, load_split, locate
from .download import DownloadError, download_file
from .idx import NORMALISATION, DataError, read_idx, to_float, write_idx

__all__ = ["DataError", "DownloadError", "read_idx", "write_idx", "to_float", "NORMALISATION",
           "DATASETS", "Dataset", "DatasetInfo", "dataset_info", "load_dataset", "load_split",
           "locate", "download_file"]
