"""Conv2D: im2col + GEMM over blocks of a few MB, one worker thread per core."""
from __future__ import annotations

import numpy as np

from ..kernels.conv import (
    block_to_nchw,
    block_to_pooled,
    col2im,
    im2col,
    nchw_to_block,
    pooled_to_block,
)
from ..params import Parameter
from ..threads import get_num_threads, run_workers, split
from .activation import ReLU
from .base import Layer, he_uniform, pair, positive_int
from .pool import MaxPool2D

#: Most bytes of im2col columns plus GEMM output per block. Each worker
#: unfolds a block, multiplies it in slices that fit its core's L2 (see
#: SMALL_GEMM_MACS) and moves the product out while the block is still in the
#: shared L3 (32 MB here). Measured on the 10->20 5x5 conv, 2 threads,
#: forward of 16x128x128: 768 KB 18.3 ms, 2 MB 18.0, 4 MB 17.0 (one unfold
#: of the whole batch, before blocks: 48.6 ms); cnn training: equal. Tests
#: lower it to force row blocks.
BLOCK_BYTES = 4 << 20

#: OpenBLAS multiplies matrices of up to 1e6 multiply-adds without packing its
#: operands first, often much faster on one core: 107 vs 79 GFLOP/s for the
#: 10->20 5x5 conv's forward GEMM in column slices of <= 200; 17 vs 94 us for
#: the weight gradient of the cnn's first conv over 4 vs 6 images. So blocks
#: of small images hold no more than this many multiply-adds, and the forward
#: and input-gradient GEMMs of larger blocks run in column slices of this size
#: (neutral for the cnn's second conv). The weight gradient's GEMM, which
#: reduces over the columns, is never sliced: that was slower (accumulating).
SMALL_GEMM_MACS = 1_000_000

#: Work (multiply-adds + 10 per conv output, the output moves' share) that
#: pays for one more worker thread: handing work to a thread costs ~50-100 us
#: here. Measured crossovers at 2 threads: the cnn's first conv (1->32 3x3 on
#: 28x28) at ~20 images, its second (32->64 3x3 on 13x13) at ~4.
WORK_PER_WORKER = 4_000_000


class Conv2D(Layer):
    """2-D convolution (cross-correlation, as in PyTorch) with zero padding.

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size, stride, padding : int or (h, w)
    dtype : float32 (default) or float64 (for gradient checks)

    Shape
    -----
    input (N, C, H, W) -> output (N, OC, OH, OW), with
    OH = (H + 2*PH - KH) // SH + 1 and OW likewise from W.
    weight (OC, C, KH, KW), bias (OC,).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 dtype=np.float32):
        super().__init__()
        self.in_channels = positive_int(in_channels, "in_channels")
        self.out_channels = positive_int(out_channels, "out_channels")
        self.kernel_size = pair(kernel_size, "kernel_size", 1)
        self.stride = pair(stride, "stride", 1)
        self.padding = pair(padding, "padding", 0)
        self.dtype = np.dtype(dtype)
        kh, kw = self.kernel_size
        self.weight = Parameter("weight", np.zeros((out_channels, in_channels, kh, kw), self.dtype))
        self.bias = Parameter("bias", np.zeros(out_channels, self.dtype))
        self.reset_parameters(np.random.default_rng())
        self._cache = None
        self.unfuse()

    def unfuse(self):
        self.fused_relu = False
        self.fused_pool = None

    def fuse_next(self, layer) -> bool:
        """Absorb a following ReLU and then a MaxPool2D into the output pass.

        Inside a Sequential, conv -> ReLU -> max-pool then runs as one GEMM and
        one kernel that writes only the pooled output (the full-size
        activation is never stored), and backward likewise.
        """
        if isinstance(layer, ReLU) and not self.fused_relu and self.fused_pool is None:
            self.fused_relu = True
            return True
        if isinstance(layer, MaxPool2D) and self.fused_pool is None:
            self.fused_pool = layer
            return True
        return False

    def reset_parameters(self, rng):
        kh, kw = self.kernel_size
        self.weight.value[...] = he_uniform(rng, self.weight.shape, self.in_channels * kh * kw)
        self.bias.value[...] = 0

    def config(self):
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": list(self.padding)}

    def output_shape(self, input_shape):
        if len(input_shape) != 3 or input_shape[0] != self.in_channels:
            raise ValueError(f"Conv2D expects samples of shape ({self.in_channels}, H, W), "
                             f"got {tuple(input_shape)}")
        _, h, w = input_shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        if oh < 1 or ow < 1:
            raise ValueError(f"Conv2D kernel {self.kernel_size} with padding {self.padding} "
                             f"does not fit a {h}x{w} input")
        return (self.out_channels, oh, ow)

    def onnx_nodes(self, x, y, params):
        from onnx import helper

        (ph, pw) = self.padding
        return [helper.make_node("Conv", [x, params["weight"], params["bias"]], [y],
                                 kernel_shape=list(self.kernel_size), strides=list(self.stride),
                                 pads=[ph, pw, ph, pw])]

    def _blocks(self, start, stop, oh, ow, k):
        """Blocks (n0, n1, r0, r1) covering images [start, stop), and the most columns in one.

        Whole images are grouped while their cols and GEMM output (K + OC
        rows) fit BLOCK_BYTES, and while their GEMM fits SMALL_GEMM_MACS if one
        image's does. A larger image is cut into runs of output rows, except
        under a fused max-pool, whose windows need whole planes.
        """
        row_bytes = (k + self.out_channels) * ow * self.dtype.itemsize
        if row_bytes * oh <= BLOCK_BYTES or self.fused_pool is not None:
            per = max(1, BLOCK_BYTES // (row_bytes * oh))
            image_macs = self.out_channels * k * oh * ow
            if image_macs <= SMALL_GEMM_MACS:
                per = min(per, SMALL_GEMM_MACS // image_macs)
            blocks = [(a, min(stop, a + per), 0, oh) for a in range(start, stop, per)]
            return blocks, min(per, stop - start) * oh * ow
        rows = max(1, BLOCK_BYTES // row_bytes)
        blocks = [(n, n + 1, r, min(oh, r + rows)) for n in range(start, stop)
                  for r in range(0, oh, rows)]
        return blocks, min(rows, oh) * ow

    def _worker_ranges(self, n, oh, ow, k):
        """Images per worker thread: [0, n) split among as many workers as the work pays for."""
        work = n * oh * ow * self.out_channels * (k + 10)
        return split(n, min(get_num_threads(), max(1, work // WORK_PER_WORKER)))

    def _geometry(self, x):
        """(C, H, W, KH, KW, SH, SW, PH, PW, OH, OW): the shape arguments of im2col/col2im."""
        _, c, h, w = x.shape
        _, oh, ow = self.output_shape((c, h, w))
        return (c, h, w, *self.kernel_size, *self.stride, *self.padding, oh, ow)

    def forward(self, x, training=True):
        x = self._check_input(x, 4, self.dtype)
        n = x.shape[0]
        geometry = self._geometry(x)
        c, _, _, kh, kw, _, _, _, _, oh, ow = geometry
        oc, k = self.out_channels, c * kh * kw
        mode = "train" if training else "eval"
        pool = self.fused_pool
        if pool is None:
            out = self._buffer(f"out/{mode}", (n, oc, oh, ow), self.dtype)
            argmax = None
        else:
            _, poh, pow_ = pool.output_shape((oc, oh, ow))
            out = self._buffer(f"out/{mode}", (n, oc, poh, pow_), self.dtype)
            argmax = self._buffer(f"argmax/{mode}", (n, oc, poh, pow_), np.int32)
        weight = self.weight.value.reshape(oc, k)
        x_flat, out_flat = x.reshape(-1), out.reshape(-1)

        def work(worker, start, stop):
            blocks, most = self._blocks(start, stop, oh, ow, k)
            cols_buf = self._buffer(f"cols/{worker}", (k * most,), self.dtype)
            y_buf = self._buffer(f"yblock/{worker}", (oc * most,), self.dtype)
            for n0, n1, r0, r1 in blocks:
                cols_len = (n1 - n0) * (r1 - r0) * ow
                cols, yblock = cols_buf[:k * cols_len], y_buf[:oc * cols_len]
                im2col(x_flat, *geometry, n0, n1, r0, r1, cols)
                gemm_in_slices(weight, cols.reshape(k, cols_len), yblock.reshape(oc, cols_len))
                if pool is None:
                    block_to_nchw(yblock, self.bias.value, oc, oh * ow, ow, n0, n1, r0, r1,
                                  self.fused_relu, out_flat)
                else:
                    block_to_pooled(yblock, self.bias.value, oc, oh, ow, n0, n1, self.fused_relu,
                                    *pool.kernel_size, *pool.stride, poh, pow_, out_flat,
                                    argmax.reshape(-1))

        run_workers(work, self._worker_ranges(n, oh, ow, k))
        self._cache = (x, out, argmax) if training else None
        return out

    def backward(self, dy, need_input_grad=True):
        if self._cache is None:
            raise self._no_cache()
        x, out, argmax = self._cache
        dy = self._check_grad(dy, out.shape, self.dtype)
        n = x.shape[0]
        geometry = self._geometry(x)
        c, _, _, kh, kw, _, _, _, _, oh, ow = geometry
        oc, k, p = self.out_channels, c * kh * kw, oh * ow
        weight = self.weight.value.reshape(oc, k)
        dx = self._buffer("dx", x.shape, self.dtype) if need_input_grad else None
        x_flat, dy_flat, out_flat = x.reshape(-1), dy.reshape(-1), out.reshape(-1)
        ranges = self._worker_ranges(n, oh, ow, k)
        # Per-worker partial sums: dW^T (K, OC) and db (OC,).
        partial_dw = [self._buffer(f"dw/{i}", (k, oc), self.dtype) for i in range(len(ranges))]
        partial_db = [self._buffer(f"db/{i}", (oc,), self.dtype) for i in range(len(ranges))]

        # Each worker owns whole images, so col2im's overlapping adds never race.
        def work(worker, start, stop):
            blocks, most = self._blocks(start, stop, oh, ow, k)
            cols_buf = self._buffer(f"cols/{worker}", (k * most,), self.dtype)
            dy_buf = self._buffer(f"dyblock/{worker}", (oc * most,), self.dtype)
            dw_block = self._buffer(f"dwblock/{worker}", (k, oc), self.dtype)
            dw, db = partial_dw[worker], partial_db[worker]
            dw[...] = 0
            db[...] = 0
            if need_input_grad:
                dx[start:stop] = 0
            for n0, n1, r0, r1 in blocks:
                cols_len = (n1 - n0) * (r1 - r0) * ow
                cols = cols_buf[:k * cols_len].reshape(k, cols_len)
                dyblock = dy_buf[:oc * cols_len].reshape(oc, cols_len)
                im2col(x_flat, *geometry, n0, n1, r0, r1, cols.reshape(-1))
                if argmax is None:
                    nchw_to_block(dy_flat, out_flat, oc, p, ow, n0, n1, r0, r1, self.fused_relu,
                                  dyblock.reshape(-1), db)
                else:
                    pooled_to_block(dy_flat, out_flat, argmax.reshape(-1), oc, p, out[0, 0].size,
                                    n0, n1, self.fused_relu, dyblock.reshape(-1), db)
                dw += np.matmul(cols, dyblock.T, out=dw_block)  # (C*KH*KW, OC)
                if need_input_grad:
                    # cols is spent once this block's dW is known: reuse it for dcols.
                    gemm_in_slices(weight.T, dyblock, cols)
                    col2im(cols.reshape(-1), *geometry, n0, n1, r0, r1, dx.reshape(-1))

        run_workers(work, ranges)
        dweight = self.weight.grad.reshape(oc, k)
        dweight[...] = partial_dw[0].T
        self.bias.grad[...] = partial_db[0]
        for dw, db in zip(partial_dw[1:], partial_db[1:]):
            dweight += dw.T
            self.bias.grad += db
        self._cache = None
        return dx


def gemm_in_slices(a, b, out):
    """out = a @ b, as GEMMs over column slices of at most SMALL_GEMM_MACS multiply-adds.

    a: (M, K), b: (K, L), out: (M, L) float arrays (views with unit column stride).
    """
    m, k = a.shape
    cols = b.shape[1]
    slices = -(-cols * m * k // SMALL_GEMM_MACS)  # ceil: the fewest slices that fit
    step = -(-cols // slices)  # of near-equal width: no narrow (slow) last slice
    for start in range(0, cols, step):
        np.matmul(a, b[:, start:start + step], out=out[:, start:start + step])
