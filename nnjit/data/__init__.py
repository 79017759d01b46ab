"""Datasets: the IDX format, named datasets, downloads, and streams for data larger
than memory."""
from .datasets import DATASETS, Dataset, DatasetInfo, dataset_info, load_dataset, load_split, locate
from .download import DownloadError, download_file
from .idx import NORMALISATION, DataError, read_idx, to_float, write_idx
from .streaming import ArrayStream, FolderStream, StreamingDataset

__all__ = ["DataError", "DownloadError", "read_idx", "write_idx", "to_float", "NORMALISATION",
           "DATASETS", "Dataset", "DatasetInfo", "dataset_info", "load_dataset", "load_split",
           "locate", "download_file", "StreamingDataset", "ArrayStream", "FolderStream"]
