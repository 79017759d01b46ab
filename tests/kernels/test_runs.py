"""The masked-vector run helpers against numpy slicing, at every length around a vector."""
import itertools

import numpy as np
import pytest
from numba import njit

from nnjit.kernels.runs import (copy_run, deinterleave_run, interleave_run, nine_tap_rows,
                                relu_copy_run, zero_run)

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


@njit(cache=False)
def _relu(dst, d, src, s, n):
    relu_copy_run(dst, U(d), src, U(s), U(n))


@njit(cache=False)
def _split(dst, d_even, d_odd, src, s, n):
    deinterleave_run(dst, U(d_even), U(d_odd), src, U(s), U(n))


@njit(cache=False)
def _merge(dst, d, src, s_even, s_odd, n):
    interleave_run(dst, U(d), src, U(s_even), U(s_odd), U(n))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_copy_run_keeps_nan_and_negative_zero(dtype, rng):
    for n in range(0, 40):
        src = rng.normal(size=41).astype(dtype)
        src[::5] = np.nan
        src[1::7] = -0.0
        dst = rng.normal(size=40).astype(dtype)
        want = dst.copy()
        want[40 - n:] = np.where(src[1:1 + n] < 0, 0, src[1:1 + n])
        _relu(dst, 40 - n, src, 1, n)
        np.testing.assert_array_equal(dst, want, err_msg=f"n {n}")
        assert (np.signbit(dst[40 - n:]) == np.signbit(want[40 - n:])).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_even_and_odd_columns_split_and_merge_exactly(dtype, rng):
    """Every length to past two vector pairs; the halves written at the ends of
    their arrays (nothing past them touched), and merged back."""
    for n in range(0, 70):
        src = rng.normal(size=n + 3).astype(dtype)
        halves = rng.normal(size=80).astype(dtype)
        want = halves.copy()
        even, odd = src[3::2], src[4::2]
        d_even, d_odd = 2, 80 - len(odd)
        want[d_even:d_even + len(even)] = even
        want[d_odd:] = odd
        _split(halves, d_even, d_odd, src, 3, n)
        np.testing.assert_array_equal(halves, want, err_msg=f"split n {n}")
        merged = rng.normal(size=n + 5).astype(dtype)
        want_merged = merged.copy()
        want_merged[5:] = src[3:]
        _merge(merged, 5, halves, d_even, d_odd, n)
        np.testing.assert_array_equal(merged, want_merged, err_msg=f"merge n {n}")


@njit(cache=False)
def _nine_taps(out, o, ldo, src, s, lds, offsets, weights, rows, n, b, relu):
    nine_tap_rows(out, U(o), U(ldo), src, U(s), U(lds),
                  (U(offsets[0]), U(offsets[1]), U(offsets[2]), U(offsets[3]), U(offsets[4]),
                   U(offsets[5]), U(offsets[6]), U(offsets[7]), U(offsets[8])),
                  (weights[0], weights[1], weights[2], weights[3], weights[4], weights[5],
                   weights[6], weights[7], weights[8]), U(rows), U(n), b, relu)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nine_tap_rows_sum_their_taps_and_touch_only_their_rows(dtype, rng):
    """Row lengths from 1 to past two vectors, rows apart by more than their length
    or next to each other in out (half-vector rows then go in pairs, an odd
    count leaving one), taps at any offsets (overlapping, unordered); the rows
    end at the end of out and the values between and around them stay; ReLU
    keeps NaN and -0.0."""
    for n, relu, rows, gap in itertools.product(range(1, 40), (False, True), (3, 4), (0, 2)):
        ldo, lds = n + gap, n + 5
        offsets = rng.integers(0, 12, 9)
        src = rng.normal(size=(rows - 1) * lds + 12 + n).astype(dtype)
        src[::11] = np.nan
        weights = rng.normal(size=9).astype(dtype)
        b = dtype(rng.normal())
        out = rng.normal(size=(rows - 1) * ldo + n + 4).astype(dtype)
        o = out.size - ((rows - 1) * ldo + n)
        want = out.copy()
        for r in range(rows):
            total = np.full(n, b, dtype)
            for t in range(9):
                start = r * lds + offsets[t]
                total = total + weights[t] * src[start:start + n]
            if relu:
                total = np.where(total < 0, 0, total)
            want[o + r * ldo:o + r * ldo + n] = total
        _nine_taps(out, o, ldo, src, 0, lds, offsets, weights, rows, n, b, relu)
        tol = 1e-5 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(out, want, rtol=tol, atol=tol,
                                   err_msg=f"n {n} relu {relu} rows {rows} gap {gap}")
        assert np.isnan(out).sum() == np.isnan(want).sum()
