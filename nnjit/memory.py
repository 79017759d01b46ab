"""Large work buffers on transparent huge pages.

The L2 cache is indexed by physical address, and with 4 KB pages where a
buffer's pages land in physical memory is chance: the cache sets that its
rows map to differ from one process to the next. A convolution's unfolded
columns (rows 2,304 bytes apart, read down 250 rows at a time) conflicted
in L2 in some processes and not in others: the 10->20 5x5 conv on 64 28x28
images ran at 42,000 img/s in three runs of four and 55,600 in the fourth
(2 threads, the worker thread 30% slower than the main one on the same
work). On 2 MB pages the layout within each page is the same in every
process: 56,400-56,800 img/s in each of four runs.

numpy's own allocator asks for huge pages from 4 MB up; the layers'
workspaces are mostly smaller, so they come from here.
"""
from __future__ import annotations

import mmap

import numpy as np

#: Buffers of at least this many bytes go on huge pages: a buffer is rounded
#: up to whole 2 MB pages, so smaller ones would waste more than they use.
HUGE_PAGE_MIN_BYTES = 1 << 20
HUGE_PAGE = 2 << 20
_CAN_ADVISE = hasattr(mmap, "MADV_HUGEPAGE")


def empty(shape: tuple[int, ...], dtype) -> np.ndarray:
    """An uninitialised C-contiguous array of ``shape`` and ``dtype`` (like ``np.empty``),
    placed on transparent huge pages when it is HUGE_PAGE_MIN_BYTES or larger and
    the system offers them (Linux; otherwise, and if the advice fails, ordinary pages)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes < HUGE_PAGE_MIN_BYTES or not _CAN_ADVISE:
        return np.empty(shape, dtype)
    length = -(-nbytes // HUGE_PAGE) * HUGE_PAGE
    # Private: a shared anonymous mapping is shmem, which takes no transparent huge pages.
    region = mmap.mmap(-1, length + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    start = -np.frombuffer(region, np.uint8, 1).ctypes.data % HUGE_PAGE  # 2 MB-aligned
    try:
        region.madvise(mmap.MADV_HUGEPAGE, start, length)
    except OSError:  # huge pages not configured: the region stays on ordinary pages
        pass
    return np.frombuffer(region, dtype, nbytes // dtype.itemsize, start).reshape(shape)
