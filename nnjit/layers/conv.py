"""Conv2D: im2col + GEMM over blocks of a few MB, one compiled call per layer."""
from __future__ import annotations

import numpy as np

from .. import planner
from ..kernels.activation import relu_backward
from ..kernels.batchnorm import batchnorm_pool_input_grad, scaled_rows
from ..kernels.blas import blas_handle
from ..kernels.merge import add_forward
from ..kernels.grouped_conv import (grouped_conv_forward, grouped_conv_input_grad,
                                    grouped_conv_weight_grad)
from ..kernels.conv import (NO_POOL, ConvGeometry, PoolGeometry, conv_backward, conv_forward,
                            conv_forward_direct)
from ..kernels.direct_grad import conv_weight_grad_direct, flipped_transposed
from ..kernels.pointwise import pointwise_conv_backward, pointwise_conv_forward
from ..kernels.window_conv import LANES, window_conv_pool
from ..kernels.tiles import NT_REDUCTION_STEP
from ..kernels.winograd import (STAGE_CHANNELS, padded_rows, winograd_conv_pool,
                                winograd_conv_pool_backward)
from ..kernels.winograd4 import winograd4_conv
from ..params import Parameter
from ..planner import ConvAlgorithm, ConvProblem, PlanError, plan_conv
from ..threads import get_num_threads, parts_for, split, split_bounds
from .base import Layer, PooledNormGrad, float_dtype, he_uniform, pair, positive_int


class Conv2D(Layer):
    """2-D convolution (cross-correlation, as in PyTorch) with zero padding.

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size, stride : int or (h, w)
    padding : int or (h, w), "valid" (0) or "same" (PyTorch's: output as large
        as the input; stride 1 and odd kernel sizes only)
    bias : bool, default True (False: no bias parameter, ``bias`` is None)
    groups : int, default 1
        Input and output channels in that many groups, each output channel
        reading only its group's inputs; depthwise when ``groups == in_channels``.
    dilation : int or (h, w), default 1
        Spacing between the kernel's taps.
    dtype : float32 (default) or float64 (for gradient checks)

    Shape
    -----
    input (N, C, H, W) -> output (N, OC, OH, OW), with
    OH = (H + 2*PH - DH*(KH-1) - 1) // SH + 1 and OW likewise from W.
    weight (OC, C/groups, KH, KW), bias (OC,).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 bias=True, groups=1, dilation=1, dtype=np.float32):
        super().__init__()
        if not isinstance(bias, (bool, np.bool_)):
            raise ValueError(f"bias must be True or False, got {bias!r}")
        shapes = self.array_shapes(in_channels=in_channels, out_channels=out_channels,
                                   kernel_size=kernel_size, groups=groups)
        self.groups = int(groups)
        self.dilation = pair(dilation, "dilation", 1)
        self.out_channels, self.in_channels = shapes["weight"][0], int(in_channels)
        self.kernel_size = pair(kernel_size, "kernel_size", 1)
        self.stride = pair(stride, "stride", 1)
        self.same_padding = isinstance(padding, str) and padding == "same"
        if isinstance(padding, str) and padding == "valid":
            padding = 0
        if self.same_padding:
            if self.stride != (1, 1) or min(k % 2 for k in self.kernel_size) == 0:
                raise ValueError(f'padding="same" needs stride 1 and odd kernel sizes, got '
                                 f"kernel_size {kernel_size!r}, stride {stride!r}")
            padding = tuple(d * (k - 1) // 2 for k, d in zip(self.kernel_size, self.dilation))
        self.padding = pair(padding, "padding", 0)
        self.dtype = float_dtype(dtype)
        self.weight = Parameter("weight", np.zeros(shapes["weight"], self.dtype))
        # None without a bias (PyTorch's ``bias=False``, usual before a batch
        # norm); the kernels then add zeros (``_bias_values``).
        self.bias = Parameter("bias", np.zeros(shapes["bias"], self.dtype)) if bias else None
        self.reset_parameters(np.random.default_rng())
        self._cache = None
        self._plans = {}
        self._conv_plans = {}
        self._scaled_from: Conv2D | None = None  # see take_norm_scale
        self.norm_scale: np.ndarray | None = None
        self.set_epilogue()

    @classmethod
    def array_shapes(cls, in_channels, out_channels, kernel_size, bias=True, groups=1, **_):
        ic, oc = positive_int(in_channels, "in_channels"), positive_int(out_channels, "out_channels")
        kh, kw = pair(kernel_size, "kernel_size", 1)
        groups = positive_int(groups, "groups")
        if ic % groups or oc % groups:
            raise ValueError(f"in_channels {ic} and out_channels {oc} must both be divisible "
                             f"by groups {groups}")
        return {"weight": (oc, ic // groups, kh, kw), **({"bias": (oc,)} if bias else {})}

    @property
    def plain(self) -> bool:
        """No groups and no dilation: every algorithm can run it (see ``plan_conv``)."""
        return self.groups == 1 and self.dilation == (1, 1)

    def post_op_names(self) -> tuple[str, ...]:
        """The post-ops of ``nnjit.fusion.POST_OPS`` this conv's output pass applies:
        a grouped or dilated conv takes a ReLU only."""
        return ("relu", "pool") if self.plain else ("relu",)

    def may_run_winograd(self) -> bool:
        """Whether the planner may run this conv by Winograd on some input."""
        return planner.winograd_may_run(self.kernel_size, self.stride, self.groups,
                                        self.dilation, self.dtype, self.in_channels)

    def take_norm_scale(self, source: Conv2D) -> np.ndarray:
        """Make this conv (an inference copy of ``source``, ``nnjit.folding``)
        compute with source's weight (OC, C, KH, KW), as it is at each call, times
        the returned ``norm_scale`` (OC,) per output channel, which a folded norm
        writes before each call: Winograd takes the scale into its filter
        transform (redone only when weight or scale changed), other algorithms
        get the scaled weight written into this conv's own at each call."""
        self._scaled_from = source
        self.norm_scale = np.ones(self.out_channels, self.dtype)
        return self.norm_scale

    def _no_scale(self) -> np.ndarray:
        """What Winograd takes for no scale of its filters: size 0."""
        return self._buffer("scale/none", (0,), self.dtype)

    def _bias_values(self) -> np.ndarray:
        """The bias the kernels add: (OC,), zeros without one."""
        if self.bias is not None:
            return self.bias.value
        return self._buffer("bias/none", (self.out_channels,), self.dtype, fill=0)

    def _bias_grads(self) -> np.ndarray:
        """Where the kernels write the bias gradient: (OC,), scratch without one."""
        if self.bias is not None:
            return self.bias.grad
        return self._buffer("bias/none-grad", (self.out_channels,), self.dtype)

    def set_epilogue(self, relu=False, pool=None, add=False, add_relu=False):
        """What the output pass applies after the bias (the fusion pass decides,
        ``nnjit.fusion``): a ReLU, then a max-pool (a MaxPool2D whose shape
        parameters it reads); conv -> ReLU -> max-pool then runs as one GEMM and
        one pass that writes only the pooled output, and backward likewise.
        ``add`` (at inference): the residual sum an Add after the conv did,
        then its ReLU with ``add_relu``; ``forward`` takes the other tensor."""
        self.fused_relu = bool(relu)
        self.fused_pool = pool
        self.fused_add = bool(add)
        self.fused_add_relu = bool(add_relu)

    def reset_parameters(self, rng):
        kh, kw = self.kernel_size
        self.weight.value[...] = he_uniform(rng, self.weight.shape,
                                            self.in_channels // self.groups * kh * kw)
        if self.bias is not None:
            self.bias.value[...] = 0

    def config(self):
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": "same" if self.same_padding else list(self.padding),
                **({} if self.bias is not None else {"bias": False}),
                **({} if self.groups == 1 else {"groups": self.groups}),
                **({} if self.dilation == (1, 1) else {"dilation": list(self.dilation)})}

    def output_shape(self, input_shape):
        if len(input_shape) != 3 or input_shape[0] != self.in_channels:
            raise ValueError(f"Conv2D expects samples of shape ({self.in_channels}, H, W), "
                             f"got {tuple(input_shape)}")
        _, h, w = input_shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        (dh, dw) = self.dilation
        oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        if oh < 1 or ow < 1:
            raise ValueError(f"Conv2D kernel {self.kernel_size} with padding {self.padding} "
                             f"does not fit a {h}x{w} input")
        return (self.out_channels, oh, ow)

    def onnx_nodes(self, x, y, params):
        from onnx import helper

        (ph, pw) = self.padding
        inputs = [x, params["weight"]] + ([params["bias"]] if self.bias is not None else [])
        return [helper.make_node("Conv", inputs, [y],
                                 kernel_shape=list(self.kernel_size), strides=list(self.stride),
                                 pads=[ph, pw, ph, pw], group=self.groups,
                                 dilations=list(self.dilation))]

    def _row_runs(self, oh, rows):
        """Runs of output rows (r0, r1, pr0, pr1) covering one image, of at most
        ``rows`` rows each (at least one pooled row's worth under a fused
        max-pool, whose runs start at a window's first row and end at its
        last: conv rows [r0, r1) feed exactly pooled rows [pr0, pr1))."""
        pool = self.fused_pool
        if pool is None:
            return [(r, min(oh, r + rows), 0, 0) for r in range(0, oh, rows)]
        (pkh, _), (psh, _) = pool.kernel_size, pool.stride
        poh = (oh - pkh) // psh + 1
        step = max(1, (rows - pkh) // psh + 1)  # pooled rows per run
        return [(p0 * psh, (min(poh, p0 + step) - 1) * psh + pkh, p0, min(poh, p0 + step))
                for p0 in range(0, poh, step)]

    def _blocks(self, start, stop, oh, ow, k, chunks=1):
        """Blocks (n0, n1, r0, r1, pr0, pr1) covering images [start, stop).

        Whole images are grouped while their cols and GEMM output (K + OC
        rows) fit the block bytes, and while their GEMM fits the small-GEMM size if one
        image's does. A larger image, or one to be cut into at least
        ``chunks`` pieces, is cut into runs of output rows (``_row_runs``).
        """
        t = planner.tuning()
        row_bytes = (k + self.out_channels) * ow * self.dtype.itemsize
        rows = max(1, t.block_bytes // row_bytes)
        if chunks > 1:
            rows = min(rows, -(-oh // chunks))
        if rows < oh:
            runs = self._row_runs(oh, rows)
            return [(n, n + 1, *run) for n in range(start, stop) for run in runs]
        per = max(1, t.block_bytes // (row_bytes * oh))
        image_macs = self.out_channels * k * oh * ow
        if image_macs <= t.small_gemm_macs:
            per = min(per, t.small_gemm_macs // image_macs)
        (whole,) = self._row_runs(oh, oh)
        return [(a, min(stop, a + per), *whole) for a in range(start, stop, per)]

    def _plan(self, n, oh, ow, k, share_images):
        """(bounds, blocks, most): the kernels' work split for a batch of ``n``.

        The batch is cut into parts, one per thread, as many as the work pays
        for (``parts_for``; with ``share_images``, split finer by the planner's
        ``inference_split_finer``); part p walks blocks[bounds[p]:bounds[p+1]]
        (int64 (B, 6), see ``_blocks``); ``most`` is the largest block's
        column count, which sizes the workspaces. Parts own whole images,
        except with ``share_images`` (forward only: backward's col2im must
        not add into one image from two threads), where a batch smaller than
        the thread count is cut into row runs so that one image uses every
        thread. Kept per batch shape: a training loop plans once.
        """
        # + 10 per output: the output moves' share of the work
        work = n * oh * ow * self.out_channels * (k + 10)
        parts = parts_for(work, n * oh, planner.tuning().inference_split_finer) \
            if share_images else parts_for(work, n)
        key = (n, oh, ow, k, parts, share_images, self.fused_pool is not None, planner.version)
        if key not in self._plans:
            if len(self._plans) >= 16:  # many batch sizes (e.g. predict on varied inputs)
                self._plans.clear()
            if parts > n:
                blocks = self._blocks(0, n, oh, ow, k, chunks=-(-parts // n))
                parts = min(parts, len(blocks))
                bounds = [0] + [stop for _, stop in split(len(blocks), parts)]
            else:
                blocks, bounds = [], [0]
                for start, stop in split(n, parts):
                    blocks += self._blocks(start, stop, oh, ow, k)
                    bounds.append(len(blocks))
            most = max((n1 - n0) * (r1 - r0) * ow for n0, n1, r0, r1, _, _ in blocks)
            self._plans[key] = (np.array(bounds, np.int64), np.array(blocks, np.int64), most)
        return self._plans[key]

    def _pool_major(self) -> bool:
        """True when a fused max-pool's windows do not overlap (stride = window):
        blocks are then unfolded in pool-major order (``block_to_pool_major``), so
        pooling is a vectorised max over whole runs, and conv outputs no window
        reads are skipped (measured at inference, one thread: the cnn's convs
        12.4 -> 9.1 and 55.3 -> 49.1 ms per 1000 images)."""
        pool = self.fused_pool
        return pool is not None and pool.stride == pool.kernel_size

    def _slice_cols(self, k, most):
        """Columns per GEMM slice: the small-GEMM size's worth, but at least
        ``min_slice_cols``; the whole block with ``whole_gemm_channels`` output
        channels or more when the largest block (``most`` columns) has
        ``whole_gemm_cols`` or more (``planner.Tuning`` has the measurements).
        The weight gradient's GEMM, which reduces over the columns, is never
        sliced: accumulating was slower."""
        t = planner.tuning()
        if self.out_channels >= t.whole_gemm_channels and most >= t.whole_gemm_cols:
            return 1 << 30
        return max(t.min_slice_cols, t.small_gemm_macs // (self.out_channels * k))

    def _unfold_image(self, parts, blocks, geometry):
        """The per-part workspace ``unfold_block`` copies a padded block's input
        rows into: the most images in a block, whole and padded (a stand-in of
        one value without padding)."""
        g = geometry
        size = int((blocks[:, 1] - blocks[:, 0]).max()) * g.C * (g.H + 2 * g.PH) \
            * (g.W + 2 * g.PW) if g.PH or g.PW else 1
        return self._buffer("unfold/image", (parts, size), self.dtype)

    def _geometry(self, input_shape) -> ConvGeometry:
        """The :class:`~nnjit.kernels.conv.ConvGeometry` of a call on input (N, C, H, W)."""
        _, c, h, w = input_shape
        _, oh, ow = self.output_shape((c, h, w))
        return ConvGeometry(c, h, w, *self.kernel_size, *self.stride, *self.padding, oh, ow)

    def problem(self, input_shape, training) -> ConvProblem:
        """The :class:`~nnjit.planner.ConvProblem` of a call on input (N, C, H, W)."""
        n, c, h, w = input_shape
        pool = self.fused_pool
        return ConvProblem(n, c, h, w, self.out_channels, self.kernel_size, self.stride,
                           self.padding, self.dtype.name, self.fused_relu,
                           None if pool is None else (*pool.kernel_size, *pool.stride), training,
                           self.groups, self.dilation)

    def plan(self, input_shape, training) -> planner.ConvPlan:
        """The planner's plan for a call on input (N, C, H, W), kept per shape, mode,
        epilogue and settings (``planner.version``)."""
        key = (tuple(input_shape), training, self.fused_relu, self.fused_pool, planner.version)
        plan = self._conv_plans.get(key)
        if plan is None:
            if len(self._conv_plans) >= 16:
                self._conv_plans.clear()
            try:
                plan = plan_conv(self.problem(input_shape, training))
            except PlanError as err:
                raise PlanError(f"{self!r} on input {tuple(input_shape)}: {err}") from None
            planner.log_choice("conv", f"{self!r} on {tuple(input_shape)}"
                               f"{' training' if training else ''}", plan.algorithm.value,
                               plan.rule)
            self._conv_plans[key] = plan
        return plan

    def describe(self, input_shape, training) -> dict:
        """How a call on input (N, C, H, W) runs, for ``nnjit.explain``: algorithm,
        rule, threads (the parts its kernel splits into), workspace (bytes of the
        algorithm's main scratch buffers), flops (forward)."""
        plan = self.plan(input_shape, training)
        problem = self.problem(input_shape, training)
        n, c, h, w = input_shape
        (kh, kw), (ph, pw), oc = self.kernel_size, self.padding, self.out_channels
        oh, ow = problem.output
        k, hp, wp, size = c * kh * kw, h + 2 * ph, w + 2 * pw, self.dtype.itemsize
        algorithm = plan.algorithm
        if algorithm is ConvAlgorithm.WINOGRAD:
            parts, _, chunk_threads, rows, (_, _, _, _, _, poh, pow_) = \
                self._winograd_plan(input_shape)
            threads = max(parts, chunk_threads)
            outputs = poh * pow_ * oc * (1 if self.fused_pool else 4)
            floats = threads * (hp * wp * c + 16 * rows * (c + oc) + outputs) + 2 * 16 * c * oc
        elif algorithm is ConvAlgorithm.WINOGRAD_4X4:
            parts, _, chunk_threads, rows = self._winograd4_plan(input_shape)
            threads = max(parts, chunk_threads)
            stage = 4 * ow * oc + 36 * STAGE_CHANNELS
            floats = threads * (hp * wp * c + 36 * rows * (c + oc) + stage) + 36 * c * oc
        elif algorithm is ConvAlgorithm.POINTWISE:
            threads, floats = self._pointwise_split(n, c, h * w, training)[0], 0
        elif algorithm is ConvAlgorithm.WINDOWS:
            _, poh, pow_ = self.fused_pool.output_shape((oc, oh, ow))
            lanes = -(-oc // LANES) * LANES
            threads = parts_for(n * poh * pow_ * 4 * oc * k, n)
            floats = threads * (c * hp * wp * bool(ph or pw) + poh * pow_ * lanes) + k * lanes
        else:
            bounds, blocks, most = self._plan(n, oh, ow, k, share_images=not training)
            threads = len(bounds) - 1
            if algorithm is ConvAlgorithm.DIRECT:
                floats = threads * sum(self._direct_workspaces(
                    self._geometry(input_shape), oc,
                    int((blocks[:, 3] - blocks[:, 2]).max()), plan.skip_dropped))
            else:
                floats = threads * (k + oc) * most
        rule = plan.rule + ("; gradients without unfolding (direct_backward)"
                            if plan.direct_backward else "")
        return {"algorithm": algorithm.value, "rule": rule, "threads": threads,
                "workspace": floats * size, "flops": problem.flops}

    def _winograd_plan(self, input_shape):
        """(parts, per, chunk_threads, rows, geometry) of a Winograd call on input
        (N, C, H, W): the threads' parts, images per chunk, the threads that share a
        batch in one chunk on one part (one image, say; forward only, 1: none),
        Lp (``padded_rows``), and (C, H, W, PH, PW, POH, POW). The same for
        forward and backward on the same batch. Without a fused pool, the 2x2
        output tiles take the pooling windows' place: (POH, POW) = (OH/2, OW/2)."""
        n, c, h, w = input_shape
        oc = self.out_channels
        _, oh, ow = self.output_shape((c, h, w))
        poh, pow_ = (oh // 2, ow // 2) if self.fused_pool is None else \
            self.fused_pool.output_shape((oc, oh, ow))[1:]
        return (*self._winograd_chunks(n, c, poh * pow_, 16), (c, h, w, *self.padding, poh, pow_))

    def _winograd_chunks(self, n, c, windows, products):
        """(parts, per, chunk_threads, rows) of a Winograd call on n images of c
        channels, each ``windows`` pooling windows (or tiles), with ``products``
        GEMMs per chunk: the threads' parts, images per chunk (its transformed
        tiles and products within ``Tuning.winograd_chunk_bytes``), the threads
        that share a batch in one chunk (1: none), and Lp (``padded_rows``)."""
        oc = self.out_channels
        parts = parts_for(n * windows * products * c * oc, n)
        per = max(1, min(planner.tuning().winograd_chunk_bytes
                         // (windows * products * (c + oc) * self.dtype.itemsize),
                         -(-n // parts)))
        chunk_threads = min(2, get_num_threads()) if parts == 1 and per >= n else 1
        return parts, per, chunk_threads, padded_rows(per * windows)

    def _winograd4_plan(self, input_shape):
        """(parts, per, chunk_threads, rows) of an F(4x4, 3x3) call on input (N, C,
        H, W), as ``_winograd_plan``'s for the 4x4 output tiles."""
        n, c, h, w = input_shape
        _, oh, ow = self.output_shape((c, h, w))
        return self._winograd_chunks(n, c, oh // 4 * (ow // 4), 36)

    def _winograd4_forward(self, x, training, residual=None):
        """Forward by ``winograd4_conv``: x float32 (N, C, H, W) -> (N, OC, OH, OW),
        plus ``residual`` (of its shape; then the add's ReLU) if given. In
        training, backward is F(2x2, 3x3)'s (``_winograd_backward``): the
        gradients of the same conv, which F(4x4, 3x3) has no adjoint for."""
        n, c, h, w = x.shape
        oc, dtype, (ph, pw) = self.out_channels, self.dtype, self.padding
        _, oh, ow = self.output_shape((c, h, w))
        parts, per, chunk_threads, rows = self._winograd4_plan(x.shape)
        spaces = max(parts, chunk_threads)
        out = self._buffer(f"out/{'train' if training else 'eval'}", (n, oc, oh, ow), dtype)
        weight, scale = ((self._scaled_from.weight, self.norm_scale)
                         if self._scaled_from is not None and not training
                         else (self.weight, self._no_scale()))
        # Workspaces apart from F(2x2, 3x3)'s, which backward then uses: shared,
        # each training step would allocate both anew.
        winograd4_conv.run(
            spaces > 1, x.reshape(-1), weight.value.reshape(-1), scale, self._bias_values(), c, h,
            w, ph, pw, oh // 4, ow // 4, self.fused_relu, n, parts, per,
            # NaN: the kept filters match nothing, so the first call transforms them.
            self._buffer("winograd4/kept", (weight.value.size + oc,), dtype, fill=np.nan),
            self._buffer("winograd4/Ut", (36 * c * oc,), dtype),
            self._buffer("winograd4/image", (spaces, (h + 2 * ph) * (w + 2 * pw) * c), dtype),
            self._buffer("winograd4/Vt", (spaces, 36 * rows * c), dtype),
            self._buffer("winograd4/Mt", (spaces, 36 * rows * oc), dtype),
            self._buffer("winograd4/stage", (spaces, 4 * ow * oc + 36 * STAGE_CHANNELS), dtype),
            out.reshape(-1), chunk_threads, planner.host().tiles, blas_handle(),
            self._no_residual() if residual is None else residual.reshape(-1),
            self.fused_add_relu)
        self._cache = (x, out, self._no_argmax(), "winograd") if training else None
        return out

    def _winograd_workspaces(self, parts, rows, c, h, w, ph, pw, poh, pow_):
        """The per-part image (zero-bordered) and Vt workspaces forward and backward share."""
        return (self._buffer("winograd/image", (parts, (h + 2 * ph) * (w + 2 * pw) * c),
                             self.dtype),
                self._buffer("winograd/Vt", (parts, 16 * rows * c), self.dtype))

    def _winograd_forward(self, x, training, residual=None):
        """Forward by ``winograd_conv_pool``: x float32 (N, C, H, W) -> the pooled
        output (N, OC, POH, POW); in training, with the windows' winners
        (``pool_windows``) kept for ``_winograd_backward``. Without a fused pool
        -> (N, OC, OH, OW), plus ``residual`` (of its shape; then the add's
        ReLU) if given."""
        n, oc, dtype = x.shape[0], self.out_channels, self.dtype
        parts, per, chunk_threads, rows, geometry = self._winograd_plan(x.shape)
        c, h, w, ph, pw, poh, pow_ = geometry
        mode = "train" if training else "eval"
        pool = self.fused_pool is not None
        out = self._buffer(f"out/{mode}", (n, oc, poh, pow_) if pool else
                           (n, oc, 2 * poh, 2 * pow_), dtype)
        winners = training and pool
        argmax = self._buffer("argmax/winograd" if winners else "argmax/none",
                              (n * poh * pow_ * oc if winners else 1,), np.int32)
        spaces = max(parts, chunk_threads)
        scaled = self._scaled_from is not None and not training
        weight, scale = ((self._scaled_from.weight, self.norm_scale) if scaled else
                         (self.weight, self._no_scale()))
        winograd_conv_pool.run(
            spaces > 1, x.reshape(-1), weight.value.reshape(-1), scale,
            self._bias_values(), c, h, w, ph, pw, poh, pow_, self.fused_relu, pool, n, parts, per,
            # NaN: the kept filters match nothing, so the first call transforms them.
            self._buffer("winograd/kept", (weight.value.size + oc,), dtype, fill=np.nan),
            self._buffer("winograd/Ut", (16 * c * oc,), dtype),
            *self._winograd_workspaces(spaces, rows, *geometry),
            self._buffer("winograd/Mt", (spaces, 16 * rows * oc), dtype),
            self._buffer("winograd/pooled", (spaces, poh * pow_ * oc * (1 if pool else 4)), dtype),
            out.reshape(-1), training, argmax, chunk_threads, planner.host().tiles, blas_handle(),
            self._no_residual() if residual is None else residual.reshape(-1),
            self.fused_add_relu)
        self._cache = (x, out, argmax, "winograd") if training else None
        return out

    def _winograd_backward(self, x, out, dy, argmax, need_input_grad):
        """Backward of a training ``_winograd_forward`` by ``winograd_conv_pool_backward``:
        dy float32 (N, OC, POH, POW) at the pooled output (without a fused pool:
        (N, OC, OH, OW), or a norm's ``PooledNormGrad``) -> dx (N, C, H, W) or
        None; fills the gradients."""
        oc, dtype = self.out_channels, self.dtype
        parts, per, chunk_threads, rows, geometry = self._winograd_plan(x.shape)
        c, h, w, ph, pw, poh, pow_ = geometry
        pool = self.fused_pool is not None
        # with a pool, the winners kept by forward carry the ReLU
        dy = self._check_grad(dy, out.shape, dtype) if pool else self._grad_at_output(dy, out)
        dx = self._buffer("dx", x.shape, dtype) if need_input_grad else x  # x: never written
        winograd_conv_pool_backward.run(
            parts > 1, x.reshape(-1), dy.reshape(-1), argmax, self.weight.value.reshape(-1),
            c, h, w, ph, pw, poh, pow_, pool, x.shape[0], parts, per,
            self._buffer("winograd/UtT", (16 * oc * c,), dtype),
            # as many as forward's (its first `parts` used): the same buffers
            *self._winograd_workspaces(max(parts, chunk_threads), rows, *geometry),
            self._buffer("winograd/dMt", (parts, 16 * rows * oc), dtype),
            self._buffer("winograd/dVt", (parts, 16 * rows * c), dtype),
            self._buffer("winograd/dimage", (parts, (h + 2 * ph) * (w + 2 * pw) * c), dtype),
            self._buffer("winograd/dyt", (parts, poh * pow_ * oc * (1 if pool else 4)), dtype),
            self._buffer("winograd/dU", (parts, 16 * c * oc), dtype),
            self._buffer("db", (parts, oc), dtype),
            need_input_grad, dx.reshape(-1), self.weight.grad.reshape(-1), self._bias_grads(),
            planner.host().tiles, blas_handle())
        return dx if need_input_grad else None

    def _windows_forward(self, x, geometry, training):
        """Forward by ``window_conv_pool``: x float32 (N, C, H, W) -> (N, OC, POH, POW);
        in training with each window's winner, for ``conv_backward``'s pool-major path."""
        n, oc = x.shape[0], self.out_channels
        c, h, w, kh, kw, _, _, ph, pw, oh, ow = geometry
        _, poh, pow_ = self.fused_pool.output_shape((oc, oh, ow))
        taps, lanes = c * kh * kw, -(-oc // LANES) * LANES
        parts = parts_for(n * poh * pow_ * 4 * oc * taps, n)
        mode = "train" if training else "eval"
        out = self._buffer(f"out/{mode}", (n, oc, poh, pow_), self.dtype)
        argmax = self._buffer("argmax/train", (n, oc, poh, pow_), np.int32) if training \
            else self._no_argmax()
        window_conv_pool.run(
            parts > 1, x.reshape(-1), self.weight.value.reshape(-1), self._bias_values(),
            c, h, w, kh, kw, ph, pw, poh, pow_, self.fused_relu, n, parts,
            self._buffer("windows/offsets", (taps,), np.int64),
            self._buffer("windows/weight", (taps * lanes,), self.dtype),
            self._buffer("windows/bias", (lanes,), self.dtype),
            self._buffer("windows/image",
                         (parts, c * (h + 2 * ph) * (w + 2 * pw) if ph or pw else 1), self.dtype),
            self._buffer("windows/pooled", (parts, poh * pow_ * lanes), self.dtype),
            training,
            self._buffer("windows/winners", (parts, poh * pow_ * lanes if training else 1),
                         np.int32),
            argmax.reshape(-1), out.reshape(-1))
        self._cache = (x, out, argmax, "unfold") if training else None
        return out

    def _direct_workspaces(self, geometry, out_channels, rows, skipping) -> tuple[int, int]:
        """Floats a part of ``conv_forward_direct`` needs for its image copy and its
        product buffer, for a conv of ``geometry`` to ``out_channels`` (this
        layer's, or its input's for the input gradient), with blocks of at most
        ``rows`` output rows: the padded
        image and the slack its last tap's run reads past it; at a stride its
        phases (``phased_image``: sh*sw of hq x wq a channel, and the slack); a
        product of rows of the copy's width, or one float where the skipping
        tiles store the output."""
        c, h, w, _, kw, sh, sw, ph, pw, _, _ = geometry
        hp, wp = h + 2 * ph, w + 2 * pw
        hq, wq = -(-hp // sh), -(-wp // sw)
        image = c * hp * wp + kw if sh == sw == 1 else c * sh * sw * (hq * wq + (kw - 1) // sw)
        return image, 1 if skipping else out_channels * rows * wq

    def _no_residual(self) -> np.ndarray:
        """What a kernel that can add a residual takes when it adds none: size 0."""
        return self._buffer("residual/none", (0,), self.dtype)

    def _direct_forward(self, x, geometry, training, skipping, residual=None):
        """Forward by ``conv_forward_direct``: x float32 (N, C, H, W) -> (N, OC, OH, OW),
        plus ``residual`` (of the output's shape; then the add's ReLU) if given."""
        n, oc = x.shape[0], self.out_channels
        c, h, w, kh, kw, _, _, ph, pw, oh, ow = geometry
        bounds, blocks, _ = self._plan(n, oh, ow, c * kh * kw, share_images=not training)
        parts = len(bounds) - 1
        image, y = self._direct_workspaces(geometry, oc, int((blocks[:, 3] - blocks[:, 2]).max()),
                                           skipping)
        out = self._buffer("out/train" if training else "out/eval", (n, oc, oh, ow), self.dtype)
        conv_forward_direct.run(
            parts > 1, bounds, blocks, x.reshape(-1), self.weight.value.reshape(-1),
            self._bias_values(), geometry, self.fused_relu, skipping,
            self._buffer("direct/offsets", (c * kh * kw,), np.int64),
            self._buffer("direct/image", (parts, image), self.dtype, fill=0),
            self._buffer("direct/y", (parts, y), self.dtype),
            out.reshape(-1), self._no_residual() if residual is None else residual.reshape(-1),
            self.fused_add_relu)
        self._cache = (x, out, self._no_argmax(), False) if training else None
        return out

    def _pointwise_forward(self, x, geometry, training, tiles):
        """Forward by ``pointwise_conv_forward`` (1x1, stride 1, unpadded, no pool):
        x float (N, C, H, W) -> (N, OC, H, W), one product per image in place."""
        n, oc, p = x.shape[0], self.out_channels, geometry.H * geometry.W
        parts, chunks = self._pointwise_split(n, geometry.C, p, training)
        out = self._buffer("out/train" if training else "out/eval", (n, oc, geometry.OH,
                                                                        geometry.OW), self.dtype)
        pointwise_conv_forward.run(parts > 1, x.reshape(-1), self.weight.value.reshape(-1),
                                   self._bias_values(), p, parts, chunks, self.fused_relu,
                                   tiles, blas_handle(), out.reshape(-1))
        self._cache = (x, out, self._no_argmax(), "pointwise") if training else None
        return out

    def _no_argmax(self) -> np.ndarray:
        """int32 (1,): what a path without a fused max-pool passes (and keeps for
        backward) where the pooling kernels take their argmax array."""
        return self._buffer("argmax/none", (1,), np.int32)

    def _pointwise_backward(self, x, out, dy, need_input_grad):
        """Backward by ``pointwise_conv_backward``: dy float (N, OC, H, W) at the
        output (masked by a fused ReLU in the kernel); returns dx (N, C, H, W)."""
        n, c, h, w = x.shape
        oc, p = self.out_channels, h * w
        dy = self._check_grad(dy, out.shape, self.dtype)
        parts = parts_for(n * p * oc * c * 2, n)
        bounds = split_bounds(n, parts)
        parts = bounds.size - 1
        dx = self._buffer("dx", x.shape, self.dtype) if need_input_grad else x  # x: never written
        pointwise_conv_backward.run(
            parts > 1, x.reshape(-1), dy.reshape(-1), out.reshape(-1),
            self.weight.value.reshape(-1), p, bounds, self.fused_relu, need_input_grad,
            self._buffer("pointwise/masked", (parts, oc * p if self.fused_relu else 1),
                         self.dtype),
            self._buffer("dw", (parts, oc * c), self.dtype),
            self._buffer("db", (parts, oc), self.dtype), dx.reshape(-1),
            self.weight.grad.reshape(-1), self._bias_grads(), blas_handle())
        return dx if need_input_grad else None

    def _pointwise_split(self, n, c, p, training):
        """(parts, chunks) of ``pointwise_conv_forward`` on n images of c x p values:
        the threads, and the pieces of output channels (of 8 or more) each image is
        cut into so that fewer images than threads still use them all (at
        inference from less work, as ``_plan`` splits one image's rows)."""
        most = max(1, self.out_channels // 8)
        finer = 1 if training else planner.tuning().inference_split_finer
        parts = parts_for(n * p * self.out_channels * c, n * most, finer)
        return parts, min(most, -(-parts // n))

    def _direct_backward(self, x, out, dy, skipping, need_input_grad):
        """Backward of a stride-1 conv without unfolding (the planner's
        ``direct_backward``): x float32 (N, C, H, W), out (N, OC, OH, OW) the
        layer's output and dy the gradient there (or a norm's ``PooledNormGrad``). The weight gradient by
        ``conv_weight_grad_direct``; the input gradient (N, C, H, W) as the direct
        conv of dy with the weight flipped and transposed, padding KH-1-PH."""
        dy = self._grad_at_output(dy, out)
        n, oc = x.shape[0], self.out_channels
        geometry = self._geometry(x.shape)
        c, h, w, kh, kw, _, _, ph, pw, oh, ow = geometry
        hp, wp = h + 2 * ph, w + 2 * pw
        bounds = split_bounds(n, parts_for(n * oh * ow * oc * c * kh * kw, n))
        parts = bounds.size - 1
        conv_weight_grad_direct.run(
            parts > 1, bounds, x.reshape(-1), dy.reshape(-1), geometry, self.bias is not None,
            self._buffer("direct/grad_image", (parts, c * hp * wp + kw), self.dtype, fill=0),
            self._buffer("direct/dy_t", (parts, max(1, NT_REDUCTION_STEP // wp) * wp * oc),
                         self.dtype),
            self._buffer("dw", (parts, oc * c * kh * kw), self.dtype),
            self._buffer("db", (parts, oc), self.dtype),
            self.weight.grad.reshape(-1), self._bias_grads())
        if not need_input_grad:
            return None
        weight_t = self._buffer("direct/weight_t", (c * oc * kh * kw,), self.dtype)
        flipped_transposed(self.weight.value.reshape(-1), oc, c, kh, kw, weight_t)
        transposed = ConvGeometry(oc, oh, ow, kh, kw, 1, 1, kh - 1 - ph, kw - 1 - pw, h, w)
        bounds, blocks, _ = self._plan(n, h, w, oc * kh * kw, share_images=False)
        parts = len(bounds) - 1
        image, y = self._direct_workspaces(transposed, c, int((blocks[:, 3] - blocks[:, 2]).max()),
                                           skipping)
        dx = self._buffer("dx", x.shape, self.dtype)
        conv_forward_direct.run(
            parts > 1, bounds, blocks, dy.reshape(-1), weight_t,
            self._buffer("direct/no_bias", (c,), self.dtype, fill=0), transposed, False,
            skipping, self._buffer("direct/dx_offsets", (oc * kh * kw,), np.int64),
            self._buffer("direct/dy_image", (parts, image), self.dtype, fill=0),
            self._buffer("direct/dx_y", (parts, y), self.dtype),
            dx.reshape(-1), self._no_residual(), False)
        return dx

    def _grouped_forward(self, x, geometry, training):
        """Forward by ``grouped_conv_forward`` (groups, dilation; ReLU fused); a
        fused max-pool runs after it, by the pool layer itself."""
        n, mode = x.shape[0], "train" if training else "eval"
        conv = self._buffer(f"grouped/{mode}", (n, self.out_channels, geometry.OH, geometry.OW),
                            self.dtype)
        grouped_conv_forward(x.reshape(-1), self.weight.value.reshape(-1), self._bias_values(),
                             geometry, self.groups, *self.dilation, self.fused_relu,
                             conv.reshape(-1), np.int64(get_num_threads()))
        out = conv if self.fused_pool is None else self.fused_pool.forward(conv, training)
        self._cache = (x, conv, None, "grouped") if training else None
        return out

    def _grouped_backward(self, dy, need_input_grad):
        x, conv, _, _ = self._cache
        self._cache = None
        if self.fused_pool is not None and not isinstance(dy, PooledNormGrad):
            dy = self.fused_pool.backward(dy)
        dy = self._grad_at_output(dy, conv)
        geometry = self._geometry(x.shape)
        grouped_conv_weight_grad(x.reshape(-1), dy.reshape(-1), geometry, self.groups,
                                 *self.dilation, self.weight.grad.reshape(-1),
                                 self._bias_grads())
        if not need_input_grad:
            return None
        dx = self._buffer("dx", x.shape, self.dtype)
        grouped_conv_input_grad(dy.reshape(-1), self.weight.value.reshape(-1), geometry,
                                self.groups, *self.dilation, dx.reshape(-1),
                                np.int64(get_num_threads()))
        return dx

    def _grad_at_output(self, dy, out) -> np.ndarray:
        """The gradient at the conv's own output ``out`` (N, OC, OH, OW), before
        any fused pool: a handed-back norm gradient evaluated (the norm after
        this conv), the shape checked, and with a fused ReLU passed only where
        out > 0."""
        if isinstance(dy, PooledNormGrad):
            dy = self._pooled_norm_grad(dy)
        dy = self._check_grad(dy, out.shape, self.dtype)
        if self.fused_relu:
            masked = self._buffer("masked_grad", dy.shape, self.dtype)
            relu_backward(out.reshape(-1), dy.reshape(-1), masked.reshape(-1))
            dy = masked
        return dy

    def _pooled_norm_grad(self, grad: PooledNormGrad) -> np.ndarray:
        """The dense gradient a handed-back batch norm + max-pool gradient stands for."""
        n, c, h, w = grad.x.shape
        dx = self._buffer("norm/grad", grad.x.shape, self.dtype)
        batchnorm_pool_input_grad(grad.x.reshape(-1), grad.dy.reshape(-1), grad.out.reshape(-1),
                                  grad.argmax.reshape(-1), grad.coef, n, c, h * w,
                                  grad.out[0, 0].size, grad.relu, dx.reshape(-1))
        return dx

    def forward(self, x, training=True, residual=None):
        """x: float (N, C, H, W) of the layer's dtype -> (N, OC, OH, OW) (pooled, if
        a pool is fused), a buffer of the layer's. ``residual``: with an ``add``
        epilogue at inference, the Add's other tensor, of the output's shape and
        dtype: added to the output (then a ReLU with ``add_relu``)."""
        x = self._check_input(x, 4, self.dtype)
        if residual is not None:
            residual = self._checked_residual(residual, x, training)
        geometry = self._geometry(x.shape)
        plan = self.plan(x.shape, training)
        # Winograd and the direct conv add a residual in their output pass; the
        # others in one pass over the output after.
        if plan.algorithm is ConvAlgorithm.WINOGRAD:
            return self._winograd_forward(x, training, residual)
        if plan.algorithm is ConvAlgorithm.WINOGRAD_4X4:
            return self._winograd4_forward(x, training, residual)
        if self._scaled_from is not None and not training:  # see take_norm_scale
            scaled_rows(self.norm_scale, self._scaled_from.weight.value.reshape(-1),
                        self.weight.value.reshape(-1))
        if plan.algorithm is ConvAlgorithm.DIRECT:
            return self._direct_forward(x, geometry, training, plan.skip_dropped, residual)
        out = self._forward_without_residual(x, geometry, plan, training)
        if residual is not None:
            add_forward(out.reshape(-1), residual.reshape(-1), out.reshape(-1),
                        self.fused_add_relu)
        return out

    def _checked_residual(self, residual, x, training) -> np.ndarray:
        """``residual`` C-contiguous, where it can be added to this call's output;
        otherwise ValueError, as the Add whose work this is would raise."""
        if training or not self.fused_add:
            raise ValueError("Conv2D takes a residual at inference, with an add epilogue only")
        shape = (x.shape[0], *self.output_shape(x.shape[1:]))
        if not isinstance(residual, np.ndarray) or residual.shape != shape:
            raise ValueError(f"Add needs inputs of one shape, got "
                             f"{[shape, getattr(residual, 'shape', type(residual).__name__)]}")
        if residual.dtype != self.dtype:
            raise ValueError(f"Add needs inputs of one dtype, got "
                             f"{sorted(map(str, {self.dtype, residual.dtype}))}")
        return np.ascontiguousarray(residual)

    def _forward_without_residual(self, x, geometry, plan, training):
        """``forward`` by ``plan``'s algorithm other than Winograd and the direct
        conv (which ``forward`` calls itself), without a residual sum."""
        n = x.shape[0]
        algorithm = plan.algorithm
        if algorithm is ConvAlgorithm.WINDOWS:
            return self._windows_forward(x, geometry, training)
        if algorithm is ConvAlgorithm.GROUPED:
            return self._grouped_forward(x, geometry, training)
        if algorithm is ConvAlgorithm.POINTWISE:
            return self._pointwise_forward(x, geometry, training, plan.forward_tiles)
        oh, ow = geometry.OH, geometry.OW
        oc, k = self.out_channels, geometry.C * geometry.KH * geometry.KW
        mode = "train" if training else "eval"
        pool = self.fused_pool
        if pool is None:
            out = self._buffer(f"out/{mode}", (n, oc, oh, ow), self.dtype)
            argmax = self._no_argmax()
            fused = NO_POOL
        else:
            _, poh, pow_ = pool.output_shape((oc, oh, ow))
            out = self._buffer(f"out/{mode}", (n, oc, poh, pow_), self.dtype)
            argmax = self._buffer(f"argmax/{mode}", (n, oc, poh, pow_), np.int32)
            fused = PoolGeometry(1, int(self._pool_major()), *pool.kernel_size, *pool.stride,
                                 poh, pow_)
        bounds, blocks, most = self._plan(n, oh, ow, k, share_images=not training)
        parts = len(bounds) - 1
        cols = self._buffer("cols", (parts, k * most), self.dtype)
        yblock = self._buffer("yblock", (parts, oc * most), self.dtype)
        conv_forward.run(parts > 1, bounds, blocks, x.reshape(-1), self.weight.value.reshape(-1),
                         self._bias_values(), geometry, self.fused_relu, fused,
                         self._unfold_image(parts, blocks, geometry), cols, yblock,
                         out.reshape(-1), argmax.reshape(-1),
                         self._slice_cols(k, most), plan.forward_tiles, blas_handle())
        self._cache = (x, out, argmax, "unfold") if training else None
        return out

    def backward(self, dy, need_input_grad=True):
        """dy: float (N, OC, OH, OW) (pooled, if a pool is fused), or a
        :class:`PooledNormGrad` standing for it when nothing is fused into this layer
        (the fusion pass gives the norm after it ``hand_back``)."""
        if self._cache is None:
            raise self._no_cache()
        x, out, argmax, path = self._cache
        if path == "winograd":
            self._cache = None
            return self._winograd_backward(x, out, dy, argmax, need_input_grad)
        if path == "grouped":
            return self._grouped_backward(dy, need_input_grad)
        norm = isinstance(dy, PooledNormGrad)
        if path == "pointwise" and not norm:
            self._cache = None
            return self._pointwise_backward(x, out, dy, need_input_grad)
        if norm and not (self.fused_pool is None and not self.fused_relu and dy.x is out):
            raise ValueError("Conv2D.backward got a PooledNormGrad that is not about its output")
        plan = self.plan(x.shape, True)
        if plan.direct_backward:
            self._cache = None
            return self._direct_backward(x, out, dy, plan.input_grad_skip, need_input_grad)
        (pkh, pkw), psh = self.fused_pool.kernel_size if self.fused_pool else (1, 1), 1
        if norm:
            (pkh, _), (psh, _) = dy.pool_kernel, dy.pool_stride
            relu, pooled_out, argmax, coef = dy.relu, dy.out, dy.argmax, dy.coef
            dy = dy.dy
        else:
            relu, pooled_out, coef = self.fused_relu, out, self._bias_grads()[:0]
            dy = self._check_grad(dy, out.shape, self.dtype)
        n = x.shape[0]
        geometry = self._geometry(x.shape)
        oh, ow = geometry.OH, geometry.OW
        oc, k = self.out_channels, geometry.C * geometry.KH * geometry.KW
        bounds, blocks, most = self._plan(n, oh, ow, k, share_images=False)
        # The gradient at the layer's output: pooled (by this layer's pool or, for a
        # handed-back norm gradient, the norm's), or the conv's own.
        at_output = PoolGeometry(int(self.fused_pool is not None), int(self._pool_major()),
                                 pkh, pkw, psh, 1, dy.shape[2], dy.shape[3])
        parts = len(bounds) - 1
        dx = self._buffer("dx", x.shape, self.dtype) if need_input_grad else x  # x: never written
        conv_backward.run(
            parts > 1, bounds, blocks, x.reshape(-1), dy.reshape(-1), out.reshape(-1),
            argmax.reshape(-1), self.weight.value.reshape(-1), geometry, relu, at_output,
            norm, pooled_out.reshape(-1), coef,
            self._unfold_image(parts, blocks, geometry),
            self._buffer("cols", (parts, k * most), self.dtype),
            self._buffer("dyblock", (parts, oc * most), self.dtype),
            self._buffer("dyblock_t", (parts, NT_REDUCTION_STEP * oc), self.dtype),
            self._buffer("dw", (parts, oc * k), self.dtype),
            self._buffer("db", (parts, oc), self.dtype),
            need_input_grad, dx.reshape(-1), self.weight.grad.reshape(-1), self._bias_grads(),
            self._slice_cols(k, most), plan.input_grad_tiles, plan.weight_grad_tiles,
            blas_handle())
        self._cache = None
        return dx if need_input_grad else None
