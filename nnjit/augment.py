"""Random augmentation of training batches: shifts (random crops of a
zero-padded image) and horizontal flips, seeded and reproducible."""
from __future__ import annotations

import numpy as np

from .kernels.augment import shift_flip

AUGMENT_HELP = ("comma-separated: crop:P (shift each image by up to P pixels each way, zero "
                "filled: a random crop of the image padded by P), flip (mirror half the images "
                "left-right; wrong for digits and text)")


class Augment:
    """The augmentation ``--augment`` asks for.

    Parameters
    ----------
    crop : int >= 0, pixels of zero padding a random crop may shift by
    flip : bool, mirror each image left-right with probability 1/2
    """

    def __init__(self, crop: int = 0, flip: bool = False):
        if isinstance(crop, bool) or not isinstance(crop, int) or crop < 0:
            raise ValueError(f"crop must be an int >= 0, got {crop!r}")
        self.crop, self.flip = crop, bool(flip)
        self._out = None

    @classmethod
    def parse(cls, text: str) -> Augment:
        """From ``"crop:4,flip"``; ValueError naming a token it does not know."""
        crop, flip = 0, False
        for token in (t.strip() for t in text.split(",")):
            kind, _, value = token.partition(":")
            if kind == "crop" and value.isdigit():
                crop = int(value)
            elif token == "flip":
                flip = True
            elif token == "none":  # a recipe's augmentation turned off
                continue
            else:
                raise ValueError(f"--augment: unknown or malformed {token!r}; expected {AUGMENT_HELP}")
        return cls(crop, flip)

    def __str__(self) -> str:
        parts = ([f"crop:{self.crop}"] if self.crop else []) + (["flip"] if self.flip else [])
        return ",".join(parts) or "none"

    def draw(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-image (dy, dx) int64 shifts in [-crop, crop] and bool flips, for n images."""
        dy = rng.integers(-self.crop, self.crop + 1, size=n)
        dx = rng.integers(-self.crop, self.crop + 1, size=n)
        flip = rng.random(n) < 0.5 if self.flip else np.zeros(n, dtype=bool)
        return dy, dx, flip

    def __call__(self, x: np.ndarray, rng: np.random.Generator, of=None) -> np.ndarray:
        """An augmented copy of the batch x: float (N, C, H, W), in a buffer the
        next call reuses; draws from ``rng``. With ``of`` = (start, total), x is
        images [start, start + N) of a batch of ``total``: the draws are made
        for all of it and x takes its share (a rank of a data-parallel run
        augments as one process would)."""
        n, c, h, w = x.shape
        if self._out is None or self._out.shape != x.shape or self._out.dtype != x.dtype:
            self._out = np.empty_like(x)
        start, total = of if of is not None else (0, n)
        dy, dx, flip = (d[start:start + n] for d in self.draw(rng, total))
        shift_flip(np.ascontiguousarray(x).reshape(-1), n, c, h, w, dy, dx, flip,
                   self._out.reshape(-1))
        return self._out
