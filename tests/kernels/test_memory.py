"""Work buffers on huge pages (``nnjit.memory``): what they hold and where they start."""
import mmap

import numpy as np
import pytest

from nnjit import Conv2D, memory


@pytest.mark.parametrize("shape, dtype", [((3, 5), np.float32), ((2, 300_000), np.float32),
                                          ((700_000,), np.float64), ((4, 1 << 18), np.int32)])
def test_empty_gives_a_writable_array_of_the_shape(shape, dtype, rng):
    a = memory.empty(shape, dtype)
    assert a.shape == shape and a.dtype == dtype and a.flags.c_contiguous and a.flags.writeable
    values = rng.standard_normal(shape).astype(dtype)
    a[...] = values
    np.testing.assert_array_equal(a, values)


@pytest.mark.skipif(not hasattr(mmap, "MADV_HUGEPAGE"), reason="no madvise(MADV_HUGEPAGE) here")
def test_large_buffers_start_on_a_huge_page_boundary():
    """From HUGE_PAGE_MIN_BYTES a buffer starts 2 MB-aligned (the start of a huge
    page), smaller ones are numpy's; a conv layer's output buffer is such a buffer."""
    large = memory.empty((memory.HUGE_PAGE_MIN_BYTES // 4,), np.float32)
    assert large.ctypes.data % memory.HUGE_PAGE == 0
    small = memory.empty((1000,), np.float32)
    assert small.base is None  # numpy's own np.empty
    conv = Conv2D(16, 32, 5)
    out = conv.forward(np.zeros((8, 16, 64, 64), np.float32))
    assert out is conv._buffers["out/train"]
    assert out.nbytes >= memory.HUGE_PAGE_MIN_BYTES and out.ctypes.data % memory.HUGE_PAGE == 0
