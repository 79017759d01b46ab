"""The unpooled conv without unfolding (``conv_forward_direct``, at stride 1 and on
images split into their phases at stride 2) against the unfold path and the
float64 layer, and ``shifted_rows_gemm`` against numpy."""
import numpy as np
import pytest

import nnjit.kernels._jit as jit
import nnjit.threads
from nnjit import Conv2D, ReLU, Sequential
from nnjit.kernels.tiles import shifted_rows_gemm, skipping_rows_gemm


@pytest.mark.parametrize("m, c, h, w, kh, kw", [(20, 10, 28, 28, 5, 5), (4, 2, 9, 18, 3, 3),
                                                (13, 3, 10, 35, 3, 2), (37, 1, 6, 16, 1, 1),
                                                (8, 2, 7, 40, 3, 7)])
@pytest.mark.parametrize("relu", [False, True])
def test_skipping_rows_gemm_computes_only_the_kept_columns(m, c, h, w, kh, kw, relu, rng):
    """As ``shifted_rows_gemm`` over whole rows, then the last kw - 1 columns of
    each output row dropped, the bias added and ReLU applied: the same values,
    bit for bit, without computing the dropped ones (vectors stepping over the
    gap at every lane position: kept widths 16 to 38), all row tiles and
    masked last columns, each row stored ldc apart from c_off on; nothing
    written outside the rows, nothing read past the image (NaN there)."""
    oh, ow = h - kh + 1, w - kw + 1
    k = c * kh * kw
    image = np.concatenate([rng.standard_normal(c * h * w),
                            np.full(64, np.nan)]).astype(np.float32)
    offsets = np.array([(ci * h + i) * w + j for ci in range(c) for i in range(kh)
                        for j in range(kw)], np.int64)
    a = rng.standard_normal((m, k)).astype(np.float32)
    bias = rng.standard_normal(m).astype(np.float32)
    whole = np.zeros(m * oh * w, np.float32)
    shifted_rows_gemm(m, k, a.reshape(-1), np.nan_to_num(image), 0, offsets, oh * w, whole)
    kept = whole.reshape(m, oh, w)[:, :, :ow].reshape(m, -1) + bias[:, None]
    if relu:
        kept = np.where(kept < 0, np.float32(0), kept)
    ldc, c_off = oh * ow + 5, 3  # rows apart, as a conv's output planes are
    out = np.full(c_off + m * ldc + 16, 7.0, np.float32)
    skipping_rows_gemm(m, k, a.reshape(-1), image, 0, offsets, ow, w, oh * ow, out, c_off, ldc,
                       bias, relu)
    rows = out[c_off:c_off + m * ldc].reshape(m, ldc)
    np.testing.assert_array_equal(rows[:, :oh * ow], kept)
    assert (rows[:, oh * ow:] == 7.0).all() and (out[:c_off] == 7.0).all()
    assert (out[c_off + m * ldc:] == 7.0).all()


def _tiles_forced(host_with, using):
    """Tiles everywhere (as where BLAS lacks AVX-512 kernels), Winograd off: every
    float32 unpooled stride-1 conv here takes the direct path."""
    using(host=host_with(tiles=True, blas_avx512=False), winograd_in_training=False)


CASES = [(10, 20, 28, 28, 5, 0, False, 1), (3, 8, 9, 11, 3, 1, True, 1),
         (4, 6, 12, 12, 3, "same", False, 1), (2, 5, 20, 17, 5, 2, True, 1),
         (16, 36, 30, 30, 3, 1, False, 1), (6, 8, 9, 9, 1, 0, False, 1),
         # stride 2: kept columns skipped (rows of 16), odd sizes and kernels, 1x1
         (16, 32, 32, 32, 3, 1, True, 2), (8, 16, 7, 9, 3, 1, False, 2),
         (4, 16, 11, 13, 5, 2, True, 2), (3, 16, 10, 33, 2, 0, False, 2),
         (6, 16, 12, 32, 1, 0, False, 2)]


@pytest.mark.parametrize("n, block_bytes", [(1, None), (7, None), (3, 1 << 13)])
@pytest.mark.parametrize("c, oc, h, w, k, padding, relu, stride", CASES)
def test_direct_conv_matches_the_unfold_path_and_float64(c, oc, h, w, k, padding, relu, stride,
                                                         n, block_bytes, rng, host_with, using):
    """predict (one image: its rows split among the threads) and the training
    forward by the direct path (forced) equal the unfold path's and the float64
    layer's; backward after a direct forward gives the unfold path's gradients.
    Small blocks (lower block bytes) cut each image into several blocks of rows."""
    import nnjit

    _tiles_forced(host_with, using)
    if block_bytes:
        using(block_bytes=block_bytes)

    def build(dtype):
        return Sequential([Conv2D(c, oc, k, stride=stride, padding=padding, dtype=dtype)]
                          + ([ReLU()] if relu else []), seed=4)

    x = rng.standard_normal((n, c, h, w))
    reference = build(np.float64).predict(x)
    results = []
    for algorithm in ("direct", "unfold"):
        with nnjit.using(conv=algorithm):
            model = build(np.float32)
            x32 = x.astype(np.float32)
            predicted = model.predict(x32)
            trained = model.forward(x32)
            dy = np.random.default_rng(5).standard_normal(trained.shape).astype(np.float32)
            dx = model.layers[0].backward(dy) if not relu else \
                model.layers[0].backward(dy * (trained > 0))
        grads = [p.grad.copy() for p in model.parameters()]
        assert ("direct/y" in model.layers[0]._buffers) == (algorithm == "direct")
        results.append([predicted, trained, dx.copy()] + grads)
    for direct, unfolded in zip(*results, strict=True):
        np.testing.assert_allclose(direct, unfolded, rtol=1e-5, atol=1e-5 * np.abs(unfolded).max())
    np.testing.assert_allclose(results[0][0], reference, rtol=1e-4, atol=1e-5)


def test_direct_conv_agrees_with_its_serial_twin(rng, monkeypatch, host_with, using):
    _tiles_forced(host_with, using)
    x = rng.standard_normal((9, 6, 26, 30)).astype(np.float32)
    outputs = []
    for serial in (False, True):
        monkeypatch.setattr(jit, "SERIAL_BELOW", 1 << 62 if serial else jit.SERIAL_BELOW)
        monkeypatch.setattr(nnjit.threads, "WORK_PER_PART", 1 << 62 if serial else 1)
        model = Sequential([Conv2D(6, 12, 5, padding=2), ReLU()], seed=2)
        outputs.append(model.predict(x))
        assert "direct/y" in model.layers[0]._buffers
    np.testing.assert_array_equal(outputs[0], outputs[1])


@pytest.mark.parametrize("stride", [1, 2])
def test_direct_conv_after_an_input_of_another_shape_and_the_same_size(stride, rng, host_with,
                                                                       using):
    """10x10 and 7x14 inputs padded by 1 fill the same 144 positions per channel
    (at stride 2, 10x10 and 6x16 fill four phases of 36): neither may see the
    other's values where its border is, nor its kernel offsets (replayed or
    not)."""
    _tiles_forced(host_with, using)
    using(conv="direct")

    def build():
        return Sequential([Conv2D(3, 8, 3, stride=stride, padding=1)], seed=6)

    for n in (1, 2):  # one image: replayed calls, alternating between the shapes
        model = build()
        a = rng.standard_normal((n, 3, 10, 10)).astype(np.float32) + 5
        other = (7, 14) if stride == 1 else (6, 16)
        b = rng.standard_normal((n, 3, *other)).astype(np.float32)
        want_a, want_b = build().predict(a), build().predict(b)
        for _ in range(3):
            np.testing.assert_array_equal(model.predict(a), want_a)
            np.testing.assert_array_equal(model.predict(b), want_b)
