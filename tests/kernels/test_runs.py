"""The masked-vector run helpers against numpy slicing, at every length around a vector."""
import itertools

import numpy as np
import pytest
from numba import njit

from nnjit.kernels.runs import (copy_run, deinterleave_run, interleave_run, nine_tap_plane,
                                nine_tap_plane_fits, nine_tap_rows, relu_copy_run,
                                strided_nine_tap_plane, strided_nine_tap_plane_fits, zero_run)

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


@njit(cache=False)
def _plane(stride, out, o, src, s, H, W, weights, b, relu):
    w = (weights[0], weights[1], weights[2], weights[3], weights[4], weights[5], weights[6],
         weights[7], weights[8])
    if stride == 1:
        nine_tap_plane(out, U(o), src, U(s), U(H), U(W), w, b, relu)
    else:
        strided_nine_tap_plane(out, U(o), src, U(s), U(H), U(W), w, b, relu)


@njit(cache=False)
def _plane_fits(stride, H, W, itemsize):
    if stride == 1:
        return nine_tap_plane_fits(H, W, itemsize)
    return strided_nine_tap_plane_fits(H, W, itemsize)


def _plane_conv(plane, weights, b, stride, relu):
    """3x3 conv of one plane with padding 1 at ``stride``, in float64 by numpy."""
    H, W = plane.shape
    padded = np.pad(plane.astype(np.float64), 1)
    OH, OW = (H - 1) // stride + 1, (W - 1) // stride + 1
    total = np.full((OH, OW), float(b))
    for kh in range(3):
        for kw in range(3):
            total += weights[3 * kh + kw] * padded[kh:kh + stride * (OH - 1) + 1:stride,
                                                   kw:kw + stride * (OW - 1) + 1:stride]
    return np.where(total < 0, 0, total) if relu else total


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("stride", [1, 2])
def test_planes_summed_in_registers_match_numpy_and_read_only_their_plane(dtype, stride, rng):
    """Every plane shape the register paths take (rows of a quarter, half, one,
    two and three vectors at stride 1, with fewer, as many and more vectors
    one below the other than are summed at once; rows of one and two vectors
    at stride 2), placed at the start and at the end of their arrays with NaN all around:
    no value outside the plane reaches the sums, and nothing around the output
    plane is written. The shapes they refuse are the ones around those."""
    lanes = 64 // np.dtype(dtype).itemsize
    if stride == 1:
        # heights around the four vectors summed at once, one below the other
        shapes = [(h, w) for w in (lanes // 4, lanes // 2) for h in (4, 8, 12, 16, 20)
                  if h * w % lanes == 0] + [(h, w) for w in (lanes, 2 * lanes, 3 * lanes)
                                            for h in (1, 2, 4, 5, 9)]
        refused = [(3, lanes // 2), (8, lanes // 2 + 1), (8, lanes - 1), (4, lanes + 2)]
    else:
        shapes = [(4, lanes), (8, lanes), (2, 2 * lanes), (6, 2 * lanes)]
        refused = [(6, lanes), (3, 2 * lanes), (8, lanes // 2), (8, 3 * lanes), (8, lanes + 2)]
    for (H, W), relu, at_end in itertools.product(shapes, (False, True), (False, True)):
        assert _plane_fits(stride, H, W, np.dtype(dtype).itemsize), (H, W)
        plane = rng.normal(size=(H, W)).astype(dtype)
        plane[rng.random(size=plane.shape) < 0.05] = -0.0
        weights = rng.normal(size=9).astype(dtype)
        b = dtype(rng.normal())
        want = _plane_conv(plane, weights, b, stride, relu).ravel()
        src = np.full(H * W + 2 * lanes, np.nan, dtype)
        s = src.size - H * W if at_end else 0
        src[s:s + H * W] = plane.ravel()
        out = rng.normal(size=want.size + lanes).astype(dtype)
        o = out.size - want.size if at_end else 0
        around = np.delete(out.copy(), np.arange(o, o + want.size))
        _plane(stride, out, o, src, s, H, W, weights, b, relu)
        tol = 1e-5 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(out[o:o + want.size], want, rtol=tol, atol=tol,
                                   err_msg=f"H {H} W {W} relu {relu} at end {at_end}")
        np.testing.assert_array_equal(np.delete(out, np.arange(o, o + want.size)), around)
    for H, W in refused:
        assert not _plane_fits(stride, H, W, np.dtype(dtype).itemsize), (H, W)
