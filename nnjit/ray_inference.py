"""Classify a folder of any size on Ray Data: files listed and read by Ray Data,
decoded in its workers by the decoder infer.py uses (``nnjit.data.folder.decode``),
batches through a pool of actors that each hold the model once, rows streamed back
in the folder's order into a CSV or Parquet table. Ray is an optional extra:
``pip install "nnjit[ray]"``."""
from __future__ import annotations

import math
import os
import tempfile

import numpy as np

from .data import DataError
from .ray_cluster import start_ray

RAY_HINT = "--ray needs Ray Data: pip install 'nnjit[ray]'"


def actor_plan(cpus: float, actors: int | None = None) -> tuple[int, float]:
    """(actors, CPUs each) for a cluster with ``cpus`` CPUs: by default one actor
    per CPU but one, which stays free for the tasks that read and decode images
    (actors holding every CPU starve them and the job never finishes); a single
    CPU is shared by one actor (half of it) and the readers."""
    if actors is None:
        actors = max(1, int(cpus) - 1)
    return actors, min(1.0, max(cpus - 1, 0.5) / actors)


def _decode_batch(batch: dict, channels: int, size: tuple[int, int]) -> dict:
    """Ray Data batch function: file bytes -> uint8 (N, channels, H, W) pixels (``size`` (W, H)).
    An unreadable file gets blank pixels and its message in ``error`` (which the
    driver raises: Ray would only hand back the text of a task's exception)."""
    from .data.folder import decode

    pixels = np.zeros((len(batch["path"]), channels, size[1], size[0]), np.uint8)
    errors = np.full(len(pixels), "", dtype=object)
    for i, (path, data) in enumerate(zip(batch["path"], batch["bytes"])):
        try:
            pixels[i] = decode(path, channels, size, bytes(data))
        except DataError as err:
            errors[i] = str(err)
    return {"path": batch["path"], "pixels": pixels, "error": errors}


class _Predictor:
    """Ray Data actor: loads the checkpoint once (from its bytes, so that no node
    needs the file), runs its kernels on ``threads`` threads."""

    def __init__(self, checkpoint_bytes: bytes, threads: int, tta: str | None = None):
        import nnjit
        from .checkpoint import load_checkpoint
        from .data.preprocess import Preprocessing

        nnjit.set_num_threads(threads)
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "checkpoint.json")
            with open(path, "wb") as f:
                f.write(checkpoint_bytes)
            ckpt = load_checkpoint(path)
        self.model = ckpt.model
        self.preprocessing = Preprocessing.from_metadata(ckpt.metadata)
        self.tta = tta

    def __call__(self, batch: dict) -> dict:
        x = self.preprocessing.apply(batch["pixels"])
        return {"path": batch["path"], "probabilities": self.model.predict(x, len(x), self.tta),
                "error": batch["error"]}


def classify_on_ray(checkpoint_path, folder, paths: list, labels: np.ndarray | None, shape,
                    writer, batch_size: int = 1000, address: str | None = None,
                    actors: int | None = None, tta: str | None = None) -> None:
    """Classify the images at ``paths`` (all under ``folder``; absolute) with the
    checkpoint, whose model takes (C, H, W) ``shape`` inputs, writing each batch
    to ``writer`` (a PredictionWriter) in ``paths``' order, ``labels`` alongside.
    Ray Data reads the whole folder (one listing: a list of paths costs a request
    per file); files it finds that are not in ``paths`` (deeper in the folder) are
    dropped. ``address``: a Ray cluster's (default: the one ray.init finds, else
    a local Ray started and shut down here). ``actors``: the pool's size
    (default: ``actor_plan``). ``tta``: the test-time augmentation of
    ``Model.predict``.
    DataError for an unreadable image, a missing Ray, or a folder that changed."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise DataError(RAY_HINT) from None
    from .data.folder import EXTENSIONS

    with open(checkpoint_path, "rb") as f:
        checkpoint_bytes = f.read()
    row = {str(p): i for i, p in enumerate(paths)}
    started_here = not ray.is_initialized()
    if started_here:
        start_ray(address, log_to_driver=False)
    try:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # rows in the folder's order
        count, each = actor_plan(ray.cluster_resources().get("CPU", 1), actors)
        ds = ray.data.read_binary_files(str(folder), include_paths=True,
                                        file_extensions=[e[1:] for e in EXTENSIONS])
        ds = ds.map_batches(_decode_batch, batch_size=256,
                            fn_kwargs={"channels": shape[0], "size": (shape[2], shape[1])})
        ds = ds.map_batches(_Predictor, fn_constructor_args=(checkpoint_bytes,
                                                              max(1, math.floor(each)), tta),
                            batch_size=batch_size, num_cpus=each,
                            compute=ray.data.ActorPoolStrategy(size=count))
        done = 0
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            listed = np.array([p in row for p in batch["path"]], bool)  # not a nested file
            failed = [e for e, keep in zip(batch["error"], listed) if e and keep]
            if failed:
                raise DataError(failed[0])
            rows = [row[p] for p in batch["path"][listed]]
            writer.write(batch["path"][listed], batch["probabilities"][listed],
                         None if labels is None else labels[rows])
            done += len(rows)
    finally:
        if started_here:
            ray.shutdown()
    if done != len(paths):
        raise DataError(f"{folder}: {len(paths)} images were listed, {done} were read: did the "
                        "folder change while it was classified?")
