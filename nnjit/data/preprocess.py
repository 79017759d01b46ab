"""How stored images become network input, fitted on the training part and
kept in checkpoints so inference repeats it exactly."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .idx import NORMALISATION, DataError, to_float

#: Images per chunk when computing channel statistics (bounds the float copy).
STATS_CHUNK = 4096


@dataclass(frozen=True)
class Preprocessing:
    """x -> x / 255 for uint8 pixels (floats are taken as they are), then with
    ``mean``/``std`` (one value per channel) (x - mean) / std.

    Attributes
    ----------
    pixels : bool
        True when the training images were uint8 pixels (divided by 255).
    mean, std : tuple of float per channel, or None (no standardisation).
    """

    pixels: bool = True
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @classmethod
    def fit(cls, x: np.ndarray, normalize: bool = False) -> Preprocessing:
        """The preprocessing for training images x (N, C, H, W), uint8 or float;
        with ``normalize``, each channel's mean and standard deviation over x
        (after the /255), computed in float64."""
        pixels = x.dtype == np.uint8
        if not normalize:
            return cls(pixels)
        if len(x) == 0:
            raise DataError("--normalize needs training images to compute statistics from")
        channels = x.shape[1]
        total, squares = np.zeros(channels), np.zeros(channels)
        for start in range(0, len(x), STATS_CHUNK):
            chunk = cls(pixels).apply(x[start:start + STATS_CHUNK]).astype(np.float64)
            total += chunk.sum(axis=(0, 2, 3))
            squares += np.square(chunk).sum(axis=(0, 2, 3))
        count = x.size // channels
        mean = total / count
        std = np.sqrt(np.maximum(squares / count - mean ** 2, 0))
        std[std < 1e-6] = 1.0  # a constant channel: leave its scale alone
        return cls(pixels, tuple(map(float, mean)), tuple(map(float, std)))

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Network input, float32 (N, C, H, W), from images (N, C, H, W) or (N, H, W):
        uint8 pixels are divided by 255 (also for a model trained on floats,
        whose inputs are taken to be in [0, 1]), floats are copied."""
        x = np.asarray(x)
        if x.dtype == np.uint8:
            out = to_float(x)
        elif x.dtype.kind == "f":
            out = np.array(x[:, None] if x.ndim == 3 else x, dtype=np.float32)
        else:
            raise DataError(f"images must be uint8 or float, got dtype {x.dtype}")
        if self.mean is not None:
            if out.shape[1] != len(self.mean):
                raise DataError(f"images have {out.shape[1]} channels, the preprocessing "
                                f"{len(self.mean)}")
            out -= np.asarray(self.mean, np.float32).reshape(1, -1, 1, 1)
            out /= np.asarray(self.std, np.float32).reshape(1, -1, 1, 1)
        return out

    def describe(self) -> str:
        first = "x / 255" if self.pixels else "x as stored (float)"
        if self.mean is None:
            return first
        fmt = lambda v: "(" + ", ".join(f"{a:.4f}" for a in v) + ")"  # noqa: E731
        return f"({first} - mean {fmt(self.mean)}) / std {fmt(self.std)} per channel"

    def to_metadata(self) -> dict:
        """JSON-safe form for checkpoint metadata (``from_metadata`` reads it back)."""
        return {"pixels": self.pixels, "mean": None if self.mean is None else list(self.mean),
                "std": None if self.std is None else list(self.std)}

    @classmethod
    def from_metadata(cls, metadata: dict) -> Preprocessing:
        """The preprocessing a checkpoint's metadata records (checkpoints from
        before it was recorded: x / 255). DataError when malformed."""
        entry = metadata.get("preprocessing")
        if entry is None:
            legacy = metadata.get("normalisation", NORMALISATION)
            if legacy != NORMALISATION:
                raise DataError(f"unknown normalisation {legacy!r}")
            return cls()
        if not isinstance(entry, dict) or not isinstance(entry.get("pixels"), bool):
            raise DataError(f"malformed preprocessing entry {entry!r}")
        mean, std = entry.get("mean"), entry.get("std")
        if (mean is None) != (std is None):
            raise DataError("preprocessing needs both mean and std, or neither")
        if mean is not None:
            ok = lambda v: isinstance(v, list) and 0 < len(v) <= 4096 and all(  # noqa: E731
                isinstance(a, (int, float)) and not isinstance(a, bool) and math.isfinite(a)
                for a in v)
            if not (ok(mean) and ok(std) and len(mean) == len(std)) or min(std) <= 0:
                raise DataError("preprocessing mean/std must be equal-length lists of finite "
                                "numbers, std > 0")
            mean, std = tuple(map(float, mean)), tuple(map(float, std))
        return cls(entry["pixels"], mean, std)
