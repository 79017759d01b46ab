"""Compile, in a second process, the kernels the test suite is about to call.

In a fresh checkout Numba's disk cache is empty and the suite's first call of
each kernel signature compiles it, one after the other, in pytest's process:
about 190 s on the 2-core CI machine, while the second core mostly waits.
``conftest.py`` starts this script at the start of the session; it records
the kernel calls of a set of networks that together use every
kernel (each layer type and conv algorithm, training and inference, float32
and float64, the parallel and the serial twin) and compiles those neither in
memory nor in the cache into the cache, which the suite's first calls then
load. The recording runs no kernel, so it costs no compile itself; a signature
the suite reaches first is compiled there as usual, and twice (once here) at
worst. Run alone (``python tests/compile_behind.py``) it prints what it
compiled and how long it took.
"""
import dataclasses
import itertools
import sys
import time

import numpy as np

import nnjit
from nnjit import (Add, AvgPool2D, BatchNorm1D, BatchNorm2D, Concatenate, Conv2D, Dense, Dropout,
                   Flatten, GlobalAvgPool2D, Hardswish, Input, LeakyReLU, MaxPool2D, Model,
                   ReLU, Sequential, SiLU, Softmax)
from nnjit.augment import Augment
from nnjit.kernels.precompile import _compile, _missing, recorded_calls
from nnjit.losses import CrossEntropyLoss
from nnjit.planner import detected_host
from nnjit.spec import build_model

#: Batches on both sides of the kernels' serial/parallel threshold.
BATCHES = (2, 300)

#: The thresholds tests change (GEMMs cut into column slices or run whole, the
#: register tiles for every size), each on top of the defaults.
TUNINGS = ({}, {"min_slice_cols": 1, "small_gemm_macs": 1},
           {"whole_gemm_channels": 1, "whole_gemm_cols": 1},
           {"tiles_min_reduction": 1, "tiles_min_rows": 1, "nt_min_rows": 1,
            "tiled_dense_min_rows": 1})


def conv_block(dtype, c, oc, k, stride=1, padding=0, groups=1, dilation=1, norm=True):
    """conv (, batch norm), ReLU: the unit every algorithm's fusion sees."""
    layers = [Conv2D(c, oc, k, stride=stride, padding=padding, groups=groups, dilation=dilation,
                     bias=not norm, dtype=dtype)]
    return layers + ([BatchNorm2D(oc, dtype=dtype)] if norm else []) + [ReLU()]


def chains(dtype):
    """(layers, input shape): chains that route through each conv algorithm, pool,
    norm and head."""
    yield conv_block(dtype, 3, 8, 3, padding=1) + [MaxPool2D(2), Flatten(), Dense(512, 10, dtype),
                                                   Softmax()], (3, 16, 16)
    yield conv_block(dtype, 1, 16, 3, norm=False) + [MaxPool2D(2)] + \
        conv_block(dtype, 16, 32, 3, norm=False) + [MaxPool2D(2), Dropout(0.3), Flatten(),
                                                    Dense(800, 10, dtype), Softmax()], (1, 28, 28)
    yield conv_block(dtype, 8, 8, 3, stride=2, padding=1) + \
        conv_block(dtype, 8, 8, 3, groups=8, padding=1) + \
        conv_block(dtype, 8, 16, 1) + \
        conv_block(dtype, 16, 16, 3, groups=4, dilation=2, padding=2) + \
        [AvgPool2D(2), GlobalAvgPool2D(), Flatten(), BatchNorm1D(16, dtype=dtype),
         Dense(16, 10, dtype)], (8, 12, 12)
    yield conv_block(dtype, 2, 4, 5, padding=2) + [MaxPool2D(3, stride=2, padding=1),
                                                   LeakyReLU(), Flatten(), Dense(100, 16, dtype),
                                                   BatchNorm1D(16, dtype=dtype), SiLU(),
                                                   Dense(16, 10, dtype), Hardswish(), Softmax()], \
        (2, 10, 10)
    yield [Flatten(), Dense(64, 32, dtype), ReLU(), Dense(32, 32, dtype), ReLU(),
           Dense(32, 16, dtype), ReLU(), Dense(16, 10, dtype), Softmax()], (1, 8, 8)


def residual(dtype):
    """A residual block with a projection shortcut and a concatenation."""
    x = Input((4, 8, 8))
    a = ReLU()(BatchNorm2D(8, dtype=dtype)(Conv2D(4, 8, 3, padding=1, dtype=dtype)(x)))
    b = BatchNorm2D(8, dtype=dtype)(Conv2D(8, 8, 3, padding=1, dtype=dtype)(a))
    y = ReLU()(Add()([b, Conv2D(4, 8, 1, dtype=dtype)(x)]))
    y = Concatenate()([y, x])
    y = Softmax()(Dense(12 * 64, 10, dtype)(Flatten()(y)))
    return Model(x, y, seed=0), (4, 8, 8)


def training_and_inference(model, shape, batch, optimizer):
    rng = np.random.default_rng(0)
    x = rng.random((batch, *shape)).astype(model.dtype)
    labels = np.arange(batch) % 10
    model.forward(x)
    model.backward(labels)
    optimizer(model.parameters(), lr=0.01).step()
    model.predict(x)


def work_groups():
    """Lists of work, in the order to compile their kernels: the suite's first
    tests train the presets on float32 and so compile those kernels themselves,
    the kernel and layer tests after them check gradients in float64. So the
    float64 networks come first, under each conv algorithm that can run them,
    fused and alone, with each tuning, with and without the register tiles, on
    both sides of the serial threshold; then the same in float32; the presets
    last."""
    no_tiles = dataclasses.replace(detected_host(), tiles=False)
    groups = []
    for dtype in (np.float64, np.float32):
        group = []
        for conv, fusion, batch, tuning, host in itertools.product(
                (None, "winograd", "windows", "direct", "pointwise", "grouped", "unfold"),
                (True, False), BATCHES, TUNINGS, (None, no_tiles)):
            settings = dict(conv=conv, fusion=fusion, host=host, **tuning)
            optimizer = nnjit.Adam if batch == BATCHES[0] else nnjit.SGD
            group.append(lambda d=dtype, s=settings, b=batch, o=optimizer: [
                _planned(model, shape, b, o, s) for model, shape in
                [*((Sequential(layers, seed=0), shape) for layers, shape in chains(d)),
                 residual(d)]])
        groups.append(group)
    groups.append([extras] + [
        lambda p=preset, s=shape, b=batch: training_and_inference(
            build_model(p, s, seed=0), s, b, nnjit.Momentum)
        for preset, shape in (("cnn", (1, 28, 28)), ("cnn-bn", (1, 28, 28)), ("mlp", (1, 28, 28)),
                              ("resnet-mini", (1, 28, 28)), ("mobilenet", (3, 32, 32)),
                              ("cnn", (3, 32, 32)), ("cnn-bn", (3, 32, 32)))
        for batch in BATCHES])
    return groups


def _planned(model, shape, batch, optimizer, settings):
    try:
        with nnjit.using(**settings):
            training_and_inference(model, shape, batch, optimizer)
    except nnjit.PlanError:
        pass  # an algorithm that cannot run some conv of the network


def extras():
    """What no network above calls: the loss's options, the augmentation and
    F(4x4, 3x3) Winograd (by default at inference only)."""
    logits = np.random.default_rng(0).random((64, 10)).astype(np.float32)
    CrossEntropyLoss(weight=np.ones(10), label_smoothing=0.1)(logits, np.arange(64) % 10)
    images = np.zeros((64, 3, 8, 8), np.float32)
    Augment(crop=2, flip=True, erase=0.5)(images, np.random.default_rng(0))
    # F(4x4, 3x3) Winograd with a norm folded into it and a residual summed
    x = Input((32, 8, 8))
    y = BatchNorm2D(32)(Conv2D(32, 32, 3, padding=1, bias=False)(x))
    model = Model(x, ReLU()(Add()([y, x])), seed=0)
    for batch in (1, *BATCHES):
        model.predict(np.zeros((batch, 32, 8, 8), np.float32))


def main() -> None:
    start = time.perf_counter()
    jobs = {}  # in order: each group's compilations the likely longest first
    for group in work_groups():
        calls = {}
        for work in group:
            calls.update(dict.fromkeys(recorded_calls(work)))
        jobs.update(dict.fromkeys(_missing(list(calls))))
    for job in jobs:
        _compile(job)
    print(f"{len(jobs)} compilations in {time.perf_counter() - start:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
