"""The masked-vector run helpers against numpy slicing, at every length around a vector."""
import numpy as np
import pytest
from numba import njit

from nnjit.kernels.runs import copy_run, zero_run

U = np.uint64


@njit(cache=False)
def _apply(kind, dst, d, src, s, n):
    if kind == 0:
        copy_run(dst, U(d), src, U(s), U(n))
    else:
        zero_run(dst, U(d), U(n))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_runs_touch_exactly_their_elements(dtype, rng):
    """Every length from 0 to past two vectors, at offsets that cross vector
    boundaries; runs end at the last element of their arrays (masked lanes
    must not be touched) and the elements around each run stay as they were."""
    for kind in range(2):
        for n in range(0, 40):
            for d, s in ((0, 0), (min(3, 40 - n), min(7, 41 - n)), (40 - n, 41 - n)):
                src = rng.normal(size=41).astype(dtype)
                dst = rng.normal(size=40).astype(dtype)
                want = dst.copy()
                if kind == 0:
                    want[d:d + n] = src[s:s + n]
                else:
                    want[d:d + n] = 0
                _apply(kind, dst, d, src, s, n)
                np.testing.assert_array_equal(dst, want, err_msg=f"kind {kind} n {n} d {d} s {s}")
