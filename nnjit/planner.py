"""The one place that decides how each operation runs.

A layer describes its problem (shapes, stride, padding, the epilogue the fusion
pass gave it, training or inference) and asks for a plan; the planner answers
with the algorithm as a named value and the rule that chose it, and the layer
executes the plan. Nothing else chooses algorithms or compares thresholds.

The answer depends on three things only:

- the problem;
- the host's capabilities (:class:`Host`: AVX-512 for nnjit's register tiles,
  AVX-512 kernels in numpy's BLAS, cores), detected once and replaceable for
  tests (``using(host=...)``);
- the settings (:func:`using`): an algorithm forced for comparison or
  debugging, fusion and replayed inference turned off, thresholds changed
  (:class:`Tuning`, the table of every threshold with the measurement that
  set it).

Set ``NNJIT_VERBOSE=1`` to log each choice as it is made (one line per layer
and input shape, on stderr).
"""
from __future__ import annotations

import contextlib
import dataclasses
import enum
import os
import sys
import threading
from dataclasses import dataclass

import numpy as np

from .errors import NnjitError


# -- the host ------------------------------------------------------------------------
@dataclass(frozen=True)
class Host:
    """What this machine offers the kernels.

    tiles: nnjit's register tiles can run (the kernels are compiled for an
        AVX-512 CPU, ``nnjit.kernels.tiles``).
    blas_avx512: numpy's BLAS runs AVX-512 kernels (OpenBLAS's SkylakeX family).
        Where it does not, the tiles beat it on every float32 product.
    cores: CPUs this process may run on.
    """

    tiles: bool
    blas_avx512: bool
    cores: int

    @classmethod
    def detect(cls) -> "Host":
        from .kernels.blas import blas_has_avx512_kernels
        from .kernels.tiles import TILES_AVAILABLE

        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return cls(tiles=TILES_AVAILABLE, blas_avx512=blas_has_avx512_kernels(), cores=cores or 1)

    @property
    def tiles_everywhere(self) -> bool:
        """True when the tiles run and beat BLAS on every float32 product (numpy's
        BLAS has no AVX-512 kernels here). The thresholds of :class:`Tuning` that
        choose between tiles and BLAS hold only against AVX-512 kernels."""
        return self.tiles and not self.blas_avx512


# -- the table of thresholds ---------------------------------------------------------
@dataclass(frozen=True)
class Tuning:
    """Every threshold the plans compare against, with the measurement that set it
    (2-core Zen 5 VM; ms or us per call, medians of alternating runs)."""

    #: Fewest input channels for Winograd: its 16 GEMMs sum over the input
    #: channels, too short a sum below this (the cifar network's 3-channel first
    #: conv trained slower by Winograd: backward 1.7 -> 4.1 ms). At 8 channels
    #: window by window was faster, but Winograd's still wins from 16.
    winograd_min_channels: int = 8
    #: Training runs eligible convs by Winograd too (cnn training +8-12%).
    winograd_in_training: bool = True
    #: Fewest input channels for Winograd without a pool after the conv: every
    #: output is then written, not one in four. Batch 128, two threads, forward +
    #: backward ms against the direct conv and gradients: 64->64 on 8x8 5.7 vs
    #: 10.9, 32->32 on 16x16 8.4 vs 9.9, on 14x14 7.0 vs 7.7; at inference 16->16
    #: on 32x32 8.2 vs 2.9 (forward only, batch 128).
    winograd_unpooled_min_channels: int = 32
    #: Bytes of a Winograd chunk's transformed tiles and products (16 * windows *
    #: (C + OC) floats): chunks of whole images up to this size. Training at
    #: batch 64, two threads, forward / backward ms for chunks of 64 / 128 / 250 /
    #: 500 windows: 64->128 on 8x8 0.76 / 1.89, 0.83 / 2.17, 1.02 / 2.39, 1.35 /
    #: 3.30: best at 0.4-0.8 MB, in the cores' 1 MB L2.
    winograd_chunk_bytes: int = 768 << 10
    #: Fewest input channels for F(4x4, 3x3) Winograd (no pool, an output a
    #: multiple of 4 a side), which then runs before F(2x2, 3x3): its
    #: transforms move 36 values per 16 outputs, too many for a short sum.
    #: Batch 128, two threads, ms F(4x4) / F(2x2) / direct: 32->32 on 16x16
    #: 1.80 / 2.59 / -, 64->64 on 8x8 1.20 / 1.76 / -, 16->16 on 32x32 5.2 /
    #: 4.6 / 3.5.
    winograd4_min_channels: int = 32
    #: Fewest 4x4 tiles in a call for F(4x4, 3x3): below, its 36 products have
    #: too few rows and the second thread no share. Two threads, us F(4x4) /
    #: F(2x2): 64->64 on 8x8, one image (4 tiles) 55.8 / 40.7, two 80.9 /
    #: 76.3, three 84.6 / 102.1; 32->32 on 16x16, one image (16) 45.0 / 50.7.
    winograd4_min_tiles: int = 12
    #: F(4x4, 3x3) also runs the training forward (its gradients F(2x2, 3x3)'s).
    #: Off: it changes every run's trajectory, and resnet-mini's recipe was
    #: chosen on validation with F(2x2, 3x3) training; with it on, ResNet-20's
    #: 32->32 convs ran forward in 2.6-3.1 ms against 3.3-3.8 at batch 128, and
    #: resnet-mini's Fashion-MNIST run (seed 0) trained in 228 s against 249
    #: but ended at 93.49% test accuracy against 93.53%; whole steps at batch
    #: 128, on against off in alternating processes, stayed within the noise
    #: (resnet-mini 35.6-49.5 ms against 37.0-38.1, ResNet-20 194-197 against
    #: 195-210).
    winograd4_in_training: bool = False
    #: Most bytes of transposed weight for a conv run window by window: every
    #: pair of windows reads all of it, so it must stay in the core's L2. The
    #: cnn's first conv: one image 4.1 -> 2.3 us, 1000 images 1.79x faster.
    window_conv_weight_bytes: int = 256 << 10
    #: Fewest output channels for the direct conv against unfolding onto
    #: AVX-512 BLAS: ResNet-20's 16-channel 3x3 convs on 32x32, batch 1000
    #: inference, 247 ms unfolded against 155 ms direct.
    direct_min_rows: int = 16
    #: Shortest sum per output for the direct conv against unfolding onto AVX-512
    #: BLAS: a 3x3 conv of one channel. The 3-channel first conv of MobileNet and
    #: ResNet-20 on 32x32, 2 threads: MobileNet at batch 1000 84 -> 78 ms, single
    #: images 390 -> 358 us, ResNet-20's 1.62 -> 1.48 ms; training within noise.
    direct_min_reduction: int = 9
    #: Unpooled stride-1 convs run without unfolding where their rows hold less
    #: than this share of dropped columns ((KW-1) of every W+2PW). The lone
    #: 10->20 5x5 conv on 28x28 (4 of 28 dropped): one core 25 vs 31 us per image.
    direct_max_dropped: float = 0.25
    #: Most output channels for a stride-1 conv's gradients without unfolding
    #: (``direct_backward_fits``): from 64 the unfolded input gradient's GEMM
    #: sums over enough channels for the register tiles. Batch 64, two threads,
    #: backward ms direct against unfolded: 16->32 3x3 pad 1 on 32x32 6.4 vs 9.6,
    #: 32->16 7.0 vs 11.3, 64->32 on 13x13 4.1 vs 5.5; 32->64 on 13x13 4.8 vs
    #: 4.4 (pad 1) and 3.8 vs 3.1 (pad 0), 64->64 on 11x11 5.2 vs 4.3.
    direct_backward_max_out_channels: int = 32
    #: Fewest input channels for them (the weight gradient's tile rows, the input
    #: gradient's output channels; a multiple of 4). Batch 128, backward ms direct
    #: against unfolded, 3x3 pad 1 on 32x32: 8->16 4.0 vs 6.5-7.8, 8->8 3.0 vs
    #: 3.9, 4->16 2.8-3.1 both; the weight gradient alone of 1->32 on 28x28 2.0-2.4
    #: vs 1.1 with its channel padded to four (three rows of zeros a tile).
    direct_backward_min_channels: int = 8
    #: The direct conv skips the columns a row drops (skipping tiles, which store
    #: the conv's output itself: no pass moves the product out) where OW >= 16
    #: and either no vector crosses a row's end (OW a multiple of 16) or the
    #: dropped columns are this share of the padded row or more: each crossing
    #: costs ~4-6% (10->20 5x5, one image, one core: 28x28, 14% dropped, 26.1 ->
    #: 23.6 us; 20x20 1.22x; 40x40, 10%, 1.05x; 64x64, 6%, 1.00x; 3x3 on 28x28,
    #: 7%, 0.95x; two threads, 16->32 3x3 on 20x20, 9%: 1.63 against 1.76 ms).
    #: Without crossings, inference at two threads, ms: 16->16 3x3 on 32x32 at
    #: batch 128 3.63-3.71 -> 3.30-3.39, 3->16 at batch 16 0.107 -> 0.094.
    skipping_min_dropped: float = 0.1
    #: Most bytes of im2col columns plus GEMM output per block: each thread
    #: unfolds a block, multiplies it in slices and moves the product out while
    #: it is in its core's L2. fwd+bwd at batch 64, 2 threads, GFLOP/s for 1 MB
    #: vs 4 MB blocks: 64->128 3x3 pad 1 on 8x8 127 vs 107, 32->64 3x3 on 13x13
    #: 127 vs 88; 512 KB within noise of 1 MB, 128-256 KB slower.
    block_bytes: int = 1 << 20
    #: A GEMM of at most this many multiply-adds runs on BLAS's small-matrix
    #: path; blocks of small images hold no more (784->128 on 4-8 rows: 92-95
    #: GFLOP/s, 16-64 rows 39-68).
    small_gemm_macs: int = 1_000_000
    #: Fewest columns per GEMM slice: 64->128 3x3 ran at 72 GFLOP/s in slices of
    #: 13 columns, 88-92 in slices of 64 or more.
    min_slice_cols: int = 64
    #: From this many output channels, blocks of at least whole_gemm_cols columns
    #: run their GEMMs unsliced (OpenBLAS's packed kernel): the cnn 15-16% faster,
    #: cnn-bn's 48-channel conv 8% slower, the 20-channel lone conv 14-33% slower.
    whole_gemm_channels: int = 64
    whole_gemm_cols: int = 256
    #: Shortest sum a product runs in register tiles against AVX-512 BLAS kernels
    #: (K for a conv's forward, its output channels for the input gradient,
    #: in_features for a Dense): sums of 9-48 gained nothing over BLAS.
    tiles_min_reduction: int = 64
    #: Fewest rows of a conv product in register tiles against AVX-512 BLAS: at
    #: 20 rows (the lone 10->20 5x5 conv) the tiles ran 7-9% behind BLAS's slices.
    tiles_min_rows: int = 32
    #: Fewest rows a conv's weight gradient runs in tiles (its transposes cost the
    #: same whatever the rows): against AVX-512 BLAS, one core, 64 columns over
    #: 512: 96 rows 74 vs 82 GFLOP/s, 288 rows 97 vs 94, 800 rows over 576 107
    #: vs 99; against BLAS's Haswell kernels from nt_min_rows_everywhere (a
    #: conv's weight gradient over one image: 250 x 20 over 576 42.6 vs 65.0 us,
    #: 72 x 32 over 256 6.3 vs 10.9), not below (the cnn's 9-row first conv
    #: trained 16% slower).
    nt_min_rows: int = 256
    nt_min_rows_everywhere: int = 64
    #: Rows from which a Dense runs in tiles over its kept transposed weight
    #: against AVX-512 BLAS (784->128 on 1000 rows: tiles 116 GFLOP/s, BLAS 106).
    tiled_dense_min_rows: int = 256
    #: Products of fewer rows run as dot products where BLAS lacks AVX-512
    #: kernels (one core, 784->128: 1 row 3.1 vs 18.7 us, 4 rows 12.5 vs 16.2).
    dot_rows_below: int = 4
    #: Most bytes of one layer's output in a pass of ``predict`` over many images
    #: (``inference_pass``): each layer then reads what the one before wrote while
    #: it is still in cache. Batch-1000 predict on the Intel host, 2 threads, ms in
    #: one pass / passes of 128 / 64 / 32 images: mobilenet (largest output 128
    #: KB an image) 104 / 100 / 84 / 80, a residual network on 1x28x28 (conv 32,
    #: pool, res:32, res:64:2, global pool) 97 / 85 / 79 / 98, cnn 16.2 / 13.3 /
    #: 13.7 / 18.6, resnet20 (64 KB) 442 / 440 / 455 / 473.
    inference_pass_bytes: int = 8 << 20
    #: A network doing fewer FLOPs than this per byte its layers write
    #: (``Model.forward_flops`` over ``Model.forward_bytes``) is memory-bound at
    #: inference: its passes keep the largest output within
    #: ``memory_bound_pass_bytes``, in the cores' L2, instead. Batch-1000 predict
    #: on the AMD host (2 MB of L2 a core), 2 threads, img/s in passes of 16 / 32 /
    #: 64 / 128 images: mobilenet (5.0 FLOP a byte, 128 KB) 13.1k / 11.7k / 10.7k /
    #: 10.5k; above the bound, larger passes won or tied: cnn-bn (9.6) 46.1k /
    #: 48.5k / 55.0k / 51.2k, cnn (18.1) 47.9k / 50.9k / 60.5k / 53.8k,
    #: resnet-mini (20.4) 17.0k / 17.9k / 17.8k / 15.7k, resnet20 (30.2) 1.90k /
    #: 2.12k / 2.16k / 2.13k.
    memory_bound_flops_per_byte: float = 7.0
    memory_bound_pass_bytes: int = 2 << 20
    #: An unfolded, direct or pointwise conv at inference, where one image's
    #: output rows (or output channels) are shared between the threads, gives a
    #: thread this many times less work than ``threads.WORK_PER_PART`` (4e6
    #: multiply-adds). A single-image predict races that split against a
    #: recording on one thread (``nnjit.replay``), so a busy core costs nothing;
    #: with the threads awake from the kernel before, even MobileNet's 1x1 convs
    #: on one image (0.5-1e6 multiply-adds) pay to split. Single-image p10 of
    #: 3,000 calls, two threads: ResNet-20 707-712 us unsplit, 603-608 at 4,
    #: 580-583 at 16 (589 at 8); MobileNet 136-138 at 4, 121-124 at 16 and 32.
    inference_split_finer: int = 16


# -- the settings ----------------------------------------------------------------------
class ConvAlgorithm(str, enum.Enum):
    """How a convolution's forward pass runs.

    UNFOLD runs every problem and is the reference the others are tested against.
    """

    #: F(2x2, 3x3) Winograd with the 2x2 max-pool (and ReLU) fused; its own backward.
    WINOGRAD = "winograd"
    #: F(4x4, 3x3) Winograd without a pool: 4x fewer multiply-adds (F(2x2, 3x3):
    #: 2.25x), an output a multiple of 4 a side. Backward: F(2x2, 3x3)'s.
    WINOGRAD_4X4 = "winograd-4x4"
    #: Direct loops over each output plane, for any groups and dilation (the only
    #: path that runs them; depthwise convs are memory-bound); its own backward.
    GROUPED = "grouped"
    #: Pooling window by pooling window in registers, output channels on the
    #: vector lanes; nothing unfolded, no conv output in memory. Backward: unfold.
    WINDOWS = "windows"
    #: Stride 1 without unfolding: shifted products over the image in register
    #: tiles. Backward: unfold.
    DIRECT = "direct"
    #: 1x1 at stride 1, unpadded: one product per image, read and written in
    #: place (register tiles or BLAS); its own backward, likewise in place
    #: (unfold's where a batch norm hands its gradient back).
    POINTWISE = "pointwise"
    #: im2col blocks of a few hundred KB and a GEMM each (register tiles or BLAS),
    #: the epilogue (bias, ReLU, max-pool) fused into moving the product out.
    UNFOLD = "unfold"


@dataclass(frozen=True)
class Settings:
    """What :func:`using` can change. conv: the algorithm every conv must run, or
    None to let the planner choose; fusion: the fusion pass runs (off: every layer
    alone, no norm folded, the reference path); replay: small-batch ``predict``
    replays its recorded kernel calls; host and tuning: see :class:`Host`,
    :class:`Tuning`."""

    conv: ConvAlgorithm | None = None
    fusion: bool = True
    replay: bool = True
    host: Host | None = None
    tuning: Tuning = Tuning()


_settings = Settings()
_host: Host | None = None
_lock = threading.RLock()
#: A number for the settings in force, the same whenever the same settings are
#: back: plans and replay recordings kept under another one are not used.
version = 0
_versions: dict[Settings, int] = {_settings: 0}


def detected_host() -> Host:
    """This machine's :class:`Host`, detected on first use."""
    global _host
    if _host is None:
        _host = Host.detect()
    return _host


def settings() -> Settings:
    """The settings in force."""
    return _settings


def host() -> Host:
    """The host the plans are made for (the detected one unless ``using(host=...)``)."""
    return _settings.host or detected_host()


def tuning() -> Tuning:
    """The thresholds in force."""
    return _settings.tuning


@contextlib.contextmanager
def using(conv=None, fusion=None, replay=None, host=None, **thresholds):
    """Change how nnjit runs while the block runs (for the whole process).

    conv: "winograd", "winograd-4x4", "windows", "direct", "pointwise", "grouped"
        or "unfold"
        (:class:`ConvAlgorithm`):
        every conv runs it, and a conv it cannot run raises
        :class:`PlanError` naming the layer and the reason.
    fusion: False runs every layer alone (no epilogues, no norm folded into a
        conv, no Dense stack): the reference path.
    replay: False makes ``predict`` run the layers' Python every time (to
        debug a layer's ``forward``).
    host: a :class:`Host` to plan for: choose as on another machine (the
        register tiles are LLVM vectors, so they run anywhere, only slower
        without AVX-512).
    thresholds: fields of :class:`Tuning` (``block_bytes=4096``).

    >>> with nnjit.using(conv="unfold"):
    ...     slow = model.predict(x)
    """
    changes = {}
    if conv is not None:
        try:
            changes["conv"] = ConvAlgorithm(conv)
        except ValueError:
            names = ", ".join(repr(a.value) for a in ConvAlgorithm)
            raise ValueError(f"conv must be one of {names}, got {conv!r}") from None
    for name, value in (("fusion", fusion), ("replay", replay)):
        if value is not None:
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be True or False, got {value!r}")
            changes[name] = value
    if host is not None:
        if not isinstance(host, Host):
            raise ValueError(f"host must be an nnjit.planner.Host, got {host!r}")
        changes["host"] = host
    if thresholds:
        try:
            changes["tuning"] = dataclasses.replace(_settings.tuning, **thresholds)
        except TypeError:
            fields = ", ".join(f.name for f in dataclasses.fields(Tuning))
            raise ValueError(f"unknown threshold in {sorted(thresholds)}; "
                             f"thresholds are: {fields}") from None
    with _lock:
        previous = _settings
        _set(dataclasses.replace(_settings, **changes))
    try:
        yield _settings
    finally:
        with _lock:
            _set(previous)


def _set(new: Settings) -> None:
    global _settings, version
    _settings = new
    version = _versions.setdefault(new, len(_versions))


class PlanError(NnjitError, ValueError):
    """A forced algorithm cannot run a problem."""


# -- convolutions --------------------------------------------------------------------
@dataclass(frozen=True)
class ConvProblem:
    """One Conv2D call: input (N, C, H, W) float, weight (OC, C, KH, KW), and the
    epilogue the fusion pass gave the layer (ReLU, then a max-pool of
    ``pool`` = (KH, KW, SH, SW), or None)."""

    batch: int
    channels: int
    height: int
    width: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dtype: str
    relu: bool
    pool: tuple[int, int, int, int] | None
    training: bool
    groups: int = 1
    dilation: tuple[int, int] = (1, 1)

    @property
    def output(self) -> tuple[int, int]:
        """(OH, OW) of the conv, before any pool."""
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        (dh, dw) = self.dilation
        return ((self.height + 2 * ph - dh * (kh - 1) - 1) // sh + 1,
                (self.width + 2 * pw - dw * (kw - 1) - 1) // sw + 1)

    @property
    def reduction(self) -> int:
        """K = C/groups * KH * KW, the length of each output's sum."""
        return self.channels // self.groups * self.kernel[0] * self.kernel[1]

    @property
    def flops(self) -> int:
        """Floating-point operations of the forward pass (2 per multiply-add)."""
        oh, ow = self.output
        return 2 * self.batch * self.out_channels * oh * ow * self.reduction


@dataclass(frozen=True)
class ConvPlan:
    """How a :class:`ConvProblem` runs: ``algorithm``, the ``rule`` that chose it,
    for the GEMMs of the unfold path (forward, and backward of every path but
    Winograd's) whether each runs in register tiles or on BLAS, and whether
    the gradients of a stride-1 conv run without unfolding (``direct_backward``,
    see ``direct_backward_fits``; its input gradient's direct conv skipping the
    dropped columns with ``input_grad_skip``)."""

    algorithm: ConvAlgorithm
    rule: str
    forward_tiles: bool
    input_grad_tiles: bool
    weight_grad_tiles: bool
    skip_dropped: bool = False
    direct_backward: bool = False
    input_grad_skip: bool = False


def tiles_pay(rows: int, reduction: int, dtype) -> bool:
    """True when a float GEMM of ``rows`` output rows summing over ``reduction``
    runs in register tiles rather than on BLAS (one core, against OpenBLAS's
    AVX-512 slices: 115-117 vs 97-108 GFLOP/s for 64-128 rows over 288-800; equal
    for reductions of 9-27; slower at 20 rows). Where BLAS lacks AVX-512 kernels
    the tiles run every float32 product."""
    h, t = host(), _settings.tuning
    return (h.tiles and np.dtype(dtype) == np.float32
            and (h.tiles_everywhere or rows >= t.tiles_min_rows
                 and reduction >= t.tiles_min_reduction))


def skipping_pays(width: int, dropped: float) -> bool:
    """True when a direct conv of output ``width`` whose padded rows drop the
    share ``dropped`` runs in skipping tiles (``Tuning.skipping_min_dropped``)."""
    return width >= 16 and (width % 16 == 0 or dropped >= _settings.tuning.skipping_min_dropped)


def _grouped_only(p: ConvProblem) -> str | None:
    """Why only the grouped path can run ``p`` (groups or dilation), or None when
    every algorithm's own rules decide."""
    if p.groups != 1 or p.dilation != (1, 1):
        return f"runs groups=1 and dilation 1 only (got {p.groups}, {p.dilation})"
    return None


def _winograd_fits(p: ConvProblem) -> str | None:
    """Why Winograd cannot run ``p``, or None when it can: a 3x3 stride-1 conv
    with a fused 2x2 max-pool after it, or without a pool of an even output
    size (its 2x2 tiles written out as they are)."""
    if p.kernel != (3, 3) or p.stride != (1, 1):
        return "needs a 3x3 kernel at stride 1"
    if p.pool is None:
        oh, ow = p.output
        if oh % 2 or ow % 2:
            return f"needs an even output size without a pool (got {oh}x{ow})"
        return None
    if p.pool != (2, 2, 2, 2):
        return "needs a fused 2x2, stride-2 max-pool after the conv"
    return None


def _winograd4_fits(p: ConvProblem) -> str | None:
    """Why F(4x4, 3x3) Winograd cannot run ``p``, or None when it can: a float32
    3x3 stride-1 conv, no pool after it, an output a multiple of 4 a side (its
    transforms' constants are float32: 2/3 and 4/9 are not exact)."""
    if p.kernel != (3, 3) or p.stride != (1, 1):
        return "needs a 3x3 kernel at stride 1"
    if np.dtype(p.dtype) != np.float32:
        return f"runs float32 only (got {p.dtype})"
    if p.pool is not None:
        return "runs without a fused pool only"
    oh, ow = p.output
    if oh % 4 or ow % 4:
        return f"needs an output size a multiple of 4 (got {oh}x{ow})"
    return None


def winograd_may_run(kernel, stride, groups, dilation, dtype, channels) -> bool:
    """Whether ``plan_conv`` may choose Winograd for a conv of this kind on some
    input: (kh, kw) kernel, (sh, sw) stride, groups, (dh, dw) dilation, dtype
    and input channels (the pool and the input's size decide the rest)."""
    t = _settings.tuning
    return (tuple(kernel) == (3, 3) and tuple(stride) == (1, 1) and groups == 1
            and tuple(dilation) == (1, 1) and np.dtype(dtype) == np.float32
            and channels >= min(t.winograd_min_channels, t.winograd_unpooled_min_channels,
                                t.winograd4_min_channels))


def _windows_fit(p: ConvProblem) -> str | None:
    """Why window by window cannot run ``p``, or None when it can."""
    if p.stride != (1, 1):
        return "needs stride 1"
    if p.pool != (2, 2, 2, 2):
        return "needs a fused 2x2, stride-2 max-pool after the conv"
    if np.dtype(p.dtype) != np.float32:
        return "runs float32 only"
    return None


def _direct_fits(p: ConvProblem) -> str | None:
    """Why the direct conv cannot run ``p``, or None when it can. At stride 2 it
    runs on each image split into its four phases (``phased_image``), and
    ``plan_conv`` takes it only where every phase is read and the product skips
    the dropped columns: 2 threads, unfolded against direct, 16->32 3x3 on 32x32
    one image 53 vs 39 us, 128 images 2.5-3.0 vs 1.7-1.8 ms (training forward 2.5
    vs 2.0); with 8 columns to a row (32->64 on 16x16) 2.18 vs 2.27 ms, and the
    1x1 convs, reading one phase of four, 0.36 vs 0.65 ms on 16x16."""
    if p.stride not in ((1, 1), (2, 2)):
        return "needs stride 1 or 2"
    if p.pool is not None:
        return "runs without a fused max-pool"
    if np.dtype(p.dtype) != np.float32:
        return "runs float32 only"
    if p.out_channels < 4:
        return "needs at least 4 output channels (a tile's rows)"
    return None


def _pointwise_fits(p: ConvProblem) -> str | None:
    """Why the pointwise product cannot run ``p``, or None when it can."""
    if p.kernel != (1, 1) or p.stride != (1, 1) or p.padding != (0, 0):
        return "needs a 1x1 kernel at stride 1 without padding"
    if p.pool is not None:
        return "runs without a fused max-pool"
    return None


def _input_grad_dropped(p: ConvProblem) -> float:
    """The share of each padded row the input gradient's direct conv drops: KW-1
    of every OW + 2*(KW-1-PW) (the output gradient padded by KW-1-PW)."""
    (_, kw), (_, pw), (_, ow) = p.kernel, p.padding, p.output
    return (kw - 1) / (ow + 2 * (kw - 1 - pw))


def direct_backward_fits(p: ConvProblem) -> str | None:
    """Why ``p``'s gradients cannot run without unfolding, or None when they can
    (``nnjit.kernels.direct_grad``): the weight gradient in register tiles over
    the padded image's shifted rows (8 or 4 input channels a tile), the input
    gradient as the direct conv of the output gradient with the weight flipped
    and transposed (C output channels, a sum of OC*KH*KW each, padding KH-1-PH).
    Training at batch 128, two threads, ms for the weight / input gradient
    unfolded against direct: 16->16 3x3 pad 1 on 32x32 7.0 / 6.0 against 3.5 /
    3.5, 32->32 on 16x16 4.5 / 4.1 against 3.2 / 2.7 (ResNet-20's convs).
    """
    t = _settings.tuning
    (kh, kw), (ph, pw) = p.kernel, p.padding
    if not p.training:
        return "inference"
    if _grouped_only(p) or p.stride != (1, 1) or p.pool is not None:
        return "needs stride 1, no groups, dilation or fused pool"
    if np.dtype(p.dtype) != np.float32 or not host().tiles:
        return "runs float32 on AVX-512 only"
    if ph >= kh or pw >= kw:
        return "needs padding below the kernel size"
    if p.out_channels > t.direct_backward_max_out_channels:
        return (f"{p.out_channels} > {t.direct_backward_max_out_channels} output channels "
                "(the unfolded input gradient sums over enough of them for the tiles)")
    if p.channels % 4 or p.channels < t.direct_backward_min_channels:
        return (f"needs a multiple of 4 input channels (tile rows), at least "
                f"{t.direct_backward_min_channels}, got {p.channels}")
    if p.out_channels * kh * kw < t.direct_min_reduction:
        return f"a sum of {p.out_channels * kh * kw} < {t.direct_min_reduction} per input"
    if _input_grad_dropped(p) >= t.direct_max_dropped:
        return f"the input gradient's rows drop {t.direct_max_dropped:.0%} or more"
    return None


def plan_conv(p: ConvProblem) -> ConvPlan:
    """The plan for ``p``: the forced algorithm (``using(conv=...)``), or the first
    of Winograd F(4x4, 3x3), Winograd F(2x2, 3x3), pointwise, window by window,
    direct and unfold whose rule holds.

    Raises PlanError when a forced algorithm cannot run ``p``.
    """
    t = _settings.tuning
    k, oc = p.reduction, p.out_channels
    oh, ow = p.output
    nt_least = t.nt_min_rows_everywhere if host().tiles_everywhere else t.nt_min_rows
    gemms = dict(forward_tiles=tiles_pay(oc, k, p.dtype),
                 input_grad_tiles=tiles_pay(k, oc, p.dtype),
                 weight_grad_tiles=tiles_pay(k, oc, p.dtype) and k >= nt_least)
    # the direct conv's rows: the padded width, at stride 2 a phase's (half of it)
    wq = -(-(p.width + 2 * p.padding[1]) // p.stride[1])
    dropped = (wq - ow) / wq
    skip = skipping_pays(ow, dropped)
    backward = {}
    if direct_backward_fits(p) is None:  # the input gradient's output is the input
        backward = dict(direct_backward=True,
                        input_grad_skip=skipping_pays(p.width, _input_grad_dropped(p)))
    forced = _settings.conv
    if forced is not None:
        why = None if forced is ConvAlgorithm.GROUPED else _grouped_only(p) or {
            ConvAlgorithm.WINOGRAD: _winograd_fits, ConvAlgorithm.WINOGRAD_4X4: _winograd4_fits,
            ConvAlgorithm.WINDOWS: _windows_fit,
            ConvAlgorithm.DIRECT: _direct_fits,
            ConvAlgorithm.POINTWISE: _pointwise_fits}.get(forced, lambda _: None)(p)
        if why is not None:
            raise PlanError(f"conv={forced.value!r} cannot run this conv: it {why}")
        # A forced unfold is the reference path: its gradients are unfolded too.
        return ConvPlan(forced, "forced by nnjit.using(conv=...)", **gemms,
                        skip_dropped=skip and forced is ConvAlgorithm.DIRECT,
                        **(backward if forced is ConvAlgorithm.DIRECT else {}))
    if _grouped_only(p):
        return ConvPlan(ConvAlgorithm.GROUPED, f"groups {p.groups}, dilation {p.dilation}: "
                        "only direct loops run them", **gemms)
    f32 = np.dtype(p.dtype) == np.float32
    why_not = {}  # algorithm -> why its rule does not hold, for the general path's rule
    tiles4 = p.batch * (oh // 4) * (ow // 4)
    why_not["winograd-4x4"] = _winograd4_fits(p) or (
        f"{p.channels} < {t.winograd4_min_channels} input channels"
        if p.channels < t.winograd4_min_channels else
        f"{tiles4} < {t.winograd4_min_tiles} 4x4 tiles" if tiles4 < t.winograd4_min_tiles else
        "off in training" if p.training and not t.winograd4_in_training else None)
    if why_not["winograd-4x4"] is None:
        return ConvPlan(ConvAlgorithm.WINOGRAD_4X4,
                        f"float32 3x3 stride 1, no pool, output {oh}x{ow} (a multiple "
                        f"of 4), {p.channels} >= {t.winograd4_min_channels} input channels, "
                        f"{tiles4} >= {t.winograd4_min_tiles} 4x4 tiles", **gemms)
    least = t.winograd_min_channels if p.pool else t.winograd_unpooled_min_channels
    why_not["winograd"] = _winograd_fits(p) or (
        "float32 only" if not f32 else
        f"{p.channels} < {least} input channels" if p.channels < least else
        "off in training" if p.training and not t.winograd_in_training else None)
    if why_not["winograd"] is None:
        return ConvPlan(ConvAlgorithm.WINOGRAD,
                        "float32 3x3 stride 1 " + ("with a fused 2x2 max-pool" if p.pool else
                                                    "without a pool, even output size")
                        + f", {p.channels} >= {least} input channels", **gemms)
    why_not["pointwise"] = _pointwise_fits(p)
    if why_not["pointwise"] is None:
        return ConvPlan(ConvAlgorithm.POINTWISE, "1x1, stride 1, unpadded, no pool: each "
                        "image is already its product's right-hand side", **gemms)
    lanes = -(-oc // 16) * 16
    why_not["windows"] = _windows_fit(p) or (
        "needs AVX-512" if not host().tiles else
        f"transposed weight {k * lanes * 4} > {t.window_conv_weight_bytes} bytes"
        if k * lanes * 4 > t.window_conv_weight_bytes else None)
    if why_not["windows"] is None:
        return ConvPlan(ConvAlgorithm.WINDOWS,
                        f"stride 1 with a fused 2x2 max-pool on AVX-512, transposed weight "
                        f"{k * lanes * 4} <= {t.window_conv_weight_bytes} bytes (L2)", **gemms)
    why_not["direct"] = _direct_fits(p) or (
        "needs AVX-512" if not host().tiles else
        "at stride 2, needs a kernel of 2 or more a side (a tap in every phase) and "
        "the dropped columns skipped" if p.stride != (1, 1) and not (
            skip and min(p.kernel) >= 2) else
        f"{oc} < {t.direct_min_rows} output channels (its register tiles' rows)"
        if oc < t.direct_min_rows and not host().tiles_everywhere else
        f"a sum of {k} < {t.direct_min_reduction} per output"
        if k < t.direct_min_reduction and not host().tiles_everywhere else
        f"{dropped:.0%} of each padded row dropped >= {t.direct_max_dropped:.0%}"
        if dropped >= t.direct_max_dropped else None)
    if why_not["direct"] is None:
        return ConvPlan(ConvAlgorithm.DIRECT,
                        f"stride {p.stride[0]}, no pool, {dropped:.0%} of each padded row dropped "
                        f"< {t.direct_max_dropped:.0%}", **gemms, skip_dropped=skip, **backward)
    return ConvPlan(ConvAlgorithm.UNFOLD, "the general path; " + "; ".join(
        f"{name}: {reason}" for name, reason in why_not.items()), **gemms, **backward)


# -- dense layers ----------------------------------------------------------------------
class DenseAlgorithm(str, enum.Enum):
    """How a Dense layer's forward product runs."""

    #: out^T = W x^T in register tiles: fewer rows than outputs, where the tiles
    #: run every product (transposing the input moves fewer values than keeping
    #: the weight transposed). 784->128 on 64 rows, training: 63.8 -> 39.6 us.
    TRANSPOSED = "transposed"
    #: register tiles over the weight kept transposed between calls.
    TILES = "tiles"
    #: dot products, for a few rows where BLAS lacks AVX-512 kernels.
    DOT = "dot products"
    #: numpy's BLAS in chunks of rows within the small-GEMM size.
    BLAS = "blas"


@dataclass(frozen=True)
class DensePlan:
    """How a Dense layer runs on ``rows`` rows: the forward ``algorithm`` and its
    ``rule``; ``packed``: the forward product in tiles over the kept transposed
    weight (the DENSE path of a stack too); ``dot_below``: the kernel's
    threshold for dot products; ``backward_tiles``: backward's products in
    tiles."""

    algorithm: DenseAlgorithm
    rule: str
    packed: bool
    dot_below: int
    backward_tiles: bool


def plan_dense(rows: int, in_features: int, out_features: int, dtype, training: bool) -> DensePlan:
    """The plan for a Dense layer (in_features -> out_features) on ``rows`` rows.

    Against AVX-512 BLAS kernels the tiles over the kept transposed weight pay
    only from ``tiled_dense_min_rows`` rows (checking the kept weight costs a
    pass over it); where BLAS lacks them, the tiles run from ``dot_rows_below``
    rows, training included (mlp training at batch 64 10.8 -> 8.0 ms per 2048
    images on a Zen 5), and fewer rows run as dot products.
    """
    from .kernels.tiles import TILE_COLS

    h, t = host(), _settings.tuning
    f32 = np.dtype(dtype) == np.float32
    everywhere = f32 and h.tiles_everywhere
    dot_below = 0 if h.blas_avx512 else t.dot_rows_below
    if everywhere:
        packed = rows >= t.dot_rows_below
    else:
        packed = (f32 and h.tiles and rows >= t.tiled_dense_min_rows
                  and in_features >= t.tiles_min_reduction and out_features >= TILE_COLS)
    if everywhere and t.dot_rows_below <= rows < out_features:
        algorithm, rule = DenseAlgorithm.TRANSPOSED, \
            f"tiles everywhere, {rows} rows < {out_features} outputs"
    elif packed:
        algorithm, rule = DenseAlgorithm.TILES, \
            "register tiles over the kept transposed weight " + \
            ("(BLAS lacks AVX-512 kernels)" if everywhere else
             f"({rows} >= {t.tiled_dense_min_rows} rows)")
    elif rows < dot_below:
        algorithm, rule = DenseAlgorithm.DOT, \
            f"{rows} < {dot_below} rows, BLAS lacks AVX-512 kernels"
    else:
        algorithm, rule = DenseAlgorithm.BLAS, "BLAS in chunks of rows"
    return DensePlan(algorithm, rule, packed, dot_below, everywhere)


#: The fewest images ``inference_pass`` puts in a pass.
INFERENCE_PASS_MIN = 16


def inference_pass(batch: int, largest_output_bytes: int,
                   flops_per_byte: float = float("inf")) -> int:
    """Images per pass of a ``predict`` on ``batch`` images whose largest layer
    output takes ``largest_output_bytes`` an image, of a network doing
    ``flops_per_byte`` FLOPs per byte its layers write: the largest power of
    two, at least INFERENCE_PASS_MIN, whose outputs fit
    ``Tuning.inference_pass_bytes`` (``memory_bound_pass_bytes`` below
    ``memory_bound_flops_per_byte``); the whole batch when it is no larger."""
    t = tuning()
    budget = t.memory_bound_pass_bytes if flops_per_byte < t.memory_bound_flops_per_byte \
        else t.inference_pass_bytes
    fit = max(1, budget // max(1, largest_output_bytes))
    return min(batch, max(INFERENCE_PASS_MIN, 1 << (fit.bit_length() - 1)))


def log_choice(what: str, problem: str, choice: str, rule: str) -> None:
    """One line on stderr per choice when NNJIT_VERBOSE is set (read at each choice)."""
    if os.environ.get("NNJIT_VERBOSE", "") not in ("", "0"):
        print(f"nnjit: {what} {problem}: {choice} ({rule})", file=sys.stderr, flush=True)
