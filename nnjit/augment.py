"""Random augmentation of training batches: shifts (random crops of a
zero-padded image), horizontal flips and random erasing, seeded and
reproducible; and the views test-time augmentation averages over."""
from __future__ import annotations

import numpy as np

from .kernels.augment import erase_rectangles, shift_flip

AUGMENT_HELP = ("comma-separated: crop:P (shift each image by up to P pixels each way, zero "
                "filled: a random crop of the image padded by P), flip (mirror half the images "
                "left-right; wrong for digits and text), erase:P (with probability P, set a "
                "random rectangle of 2 to 40 percent of the image, aspect 0.3-3.3, to 0 in every "
                "channel: torchvision's RandomErasing)")
#: Test-time augmentation (``Model.predict(..., tta=...)``, ``--tta``): "none", or
#: "flip" (the mean of the outputs for an image and for its left-right mirror).
TTA_CHOICES = ("none", "flip")
TTA_HELP = ("test-time augmentation: none, or flip (predict each image and its left-right "
            "mirror and average the two outputs; twice the work of a prediction)")
#: Random erasing's rectangle: area as a fraction of the image, aspect ratio (h / w)
#: drawn log-uniformly, and the draws per image before it gives up (torchvision's
#: RandomErasing defaults, from Zhong et al. 2017).
ERASE_AREA, ERASE_RATIO, ERASE_ATTEMPTS = (0.02, 0.4), (0.3, 1 / 0.3), 10


class Augment:
    """The augmentation ``--augment`` asks for.

    Parameters
    ----------
    crop : int >= 0, pixels of zero padding a random crop may shift by
    flip : bool, mirror each image left-right with probability 1/2
    erase : float in [0, 1], the probability of zeroing a random rectangle of
        each image (after the shift and flip), as torchvision's RandomErasing
        with ``value=0`` does on a normalised tensor
    """

    def __init__(self, crop: int = 0, flip: bool = False, erase: float = 0.0):
        if isinstance(crop, bool) or not isinstance(crop, int) or crop < 0:
            raise ValueError(f"crop must be an int >= 0, got {crop!r}")
        if isinstance(erase, bool) or not isinstance(erase, (int, float)) or not 0 <= erase <= 1:
            raise ValueError(f"erase must be a probability in [0, 1], got {erase!r}")
        self.crop, self.flip, self.erase = crop, bool(flip), float(erase)
        self._out = None

    def __bool__(self) -> bool:
        """Whether it changes anything."""
        return bool(self.crop or self.flip or self.erase)

    @classmethod
    def parse(cls, text: str) -> Augment:
        """From ``"crop:4,flip"``; ValueError naming a token it does not know."""
        crop, flip, erase = 0, False, 0.0
        for token in (t.strip() for t in text.split(",")):
            kind, _, value = token.partition(":")
            if kind == "crop" and value.isdigit():
                crop = int(value)
            elif kind == "erase" and (probability := _probability(value)) is not None:
                erase = probability
            elif token == "flip":
                flip = True
            elif token == "none":  # a recipe's augmentation turned off
                continue
            else:
                raise ValueError(f"--augment: unknown or malformed {token!r}; expected {AUGMENT_HELP}")
        return cls(crop, flip, erase)

    def __str__(self) -> str:
        parts = ([f"crop:{self.crop}"] if self.crop else []) + (["flip"] if self.flip else []) \
            + ([f"erase:{self.erase:g}"] if self.erase else [])
        return ",".join(parts) or "none"

    def draw(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-image (dy, dx) int64 shifts in [-crop, crop] and bool flips, for n images."""
        dy = rng.integers(-self.crop, self.crop + 1, size=n)
        dx = rng.integers(-self.crop, self.crop + 1, size=n)
        flip = rng.random(n) < 0.5 if self.flip else np.zeros(n, dtype=bool)
        return dy, dx, flip

    def draw_erasing(self, rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
        """Per-image rectangles (top, left, height, width), int64 (n, 4), of images
        h x w; height 0 for an image left whole. Each image is erased with
        probability ``erase``; its rectangle takes the first of ERASE_ATTEMPTS
        draws (area uniform in ERASE_AREA of the image, aspect log-uniform in
        ERASE_RATIO, sides rounded) smaller than the image each way, at a uniform
        position; none fits: left whole."""
        erased = rng.random(n) < self.erase
        area = h * w * rng.uniform(*ERASE_AREA, size=(n, ERASE_ATTEMPTS))
        ratio = np.exp(rng.uniform(*np.log(ERASE_RATIO), size=(n, ERASE_ATTEMPTS)))
        eh = np.rint(np.sqrt(area * ratio)).astype(np.int64)
        ew = np.rint(np.sqrt(area / ratio)).astype(np.int64)
        fits = (eh >= 1) & (ew >= 1) & (eh < h) & (ew < w)  # torchvision's strict bound
        first = fits.argmax(axis=1)
        rows = np.arange(n)
        eh, ew = eh[rows, first], ew[rows, first]
        keep = erased & fits[rows, first]
        top = (rng.random(n) * (h - eh + 1)).astype(np.int64)
        left = (rng.random(n) * (w - ew + 1)).astype(np.int64)
        return np.stack([top, left, np.where(keep, eh, 0), ew], axis=1)

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
        if self.erase:  # drawn after the shifts and flips: their draws stay as they were
            erase = np.ascontiguousarray(self.draw_erasing(rng, total, h, w)[start:start + n])
            erase_rectangles(self._out.reshape(-1), n, c, h, w, erase.reshape(-1))
        return self._out


def _probability(text: str) -> float | None:
    """``text`` as a number in (0, 1], or None."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if 0 < value <= 1 else None


def check_tta(tta: str | None) -> bool:
    """True for a test-time augmentation that adds views ("flip"), False for None
    or "none"; ValueError for anything else."""
    if tta is None or tta == "none":
        return False
    if tta == "flip":
        return True
    raise ValueError(f"tta must be one of {', '.join(TTA_CHOICES)} (or None), got {tta!r}")


def mirrored(x: np.ndarray) -> np.ndarray:
    """A new C-contiguous array: images x (..., H, W) mirrored left-right (W reversed)."""
    return np.ascontiguousarray(np.asarray(x)[..., ::-1])
