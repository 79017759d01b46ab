"""Datasets: the IDX format, named datasets, downloads."""
from .idx import NORMALISATION, DataError, read_idx, to_float, write_idx

__all__ = ["DataError", "read_idx", "write_idx", "to_float", "NORMALISATION"]
