"""Classify a folder of any size on Ray Data: files read by Ray Data, decoded in
its tasks by the decoder infer.py uses (``nnjit.data.folder.decode``), batches
through a pool of actors that each hold the model once, rows streamed back in
the folder's order into a CSV or Parquet table. Ray is an optional extra:
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
    """Ray Data task: file bytes -> uint8 (N, channels, H, W) pixels (``size`` is (W, H))."""
    from .data.folder import decode

    pixels = np.stack([decode(path, channels, size, bytes(data))
                       for path, data in zip(batch["path"], batch["bytes"])])
    return {"path": batch["path"], "pixels": pixels}


class _Predictor:
    """Ray Data actor: loads the checkpoint once (from its bytes, so that no node
    needs the file), runs its kernels on ``threads`` threads."""

    def __init__(self, checkpoint_bytes: bytes, threads: int):
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

    def __call__(self, batch: dict) -> dict:
        x = self.preprocessing.apply(batch["pixels"])
        return {"path": batch["path"], "probabilities": self.model.predict(x, len(x))}


def _data_error(err: BaseException) -> DataError | None:
    """The DataError a Ray task raised, found in the exceptions Ray wraps it in."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, DataError):
            return err
        err = getattr(err, "cause", None) or err.__cause__
    return None


def classify_on_ray(checkpoint_path, paths: list, labels: np.ndarray | None, shape,
                    class_names: list[str], writer, batch_size: int = 1000,
                    address: str | None = None, actors: int | None = None) -> None:
    """Classify the images at ``paths`` (models taking uint8-derived (C, H, W)
    ``shape`` inputs) with the checkpoint, writing each batch to ``writer`` (a
    PredictionWriter) in ``paths``' order, ``labels`` alongside. ``address``: a
    Ray cluster's (default: the one ray.init finds, else a local Ray started and
    shut down here). ``actors``: the pool's size (default: ``actor_plan``).
    DataError for an unreadable image or a missing Ray."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise DataError(RAY_HINT) from None
    with open(checkpoint_path, "rb") as f:
        checkpoint_bytes = f.read()
    started_here = not ray.is_initialized()
    if started_here:
        start_ray(address, log_to_driver=False)
    try:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # rows in the folder's order
        count, each = actor_plan(ray.cluster_resources().get("CPU", 1), actors)
        threads = max(1, math.floor(each))
        ds = ray.data.read_binary_files([str(p) for p in paths], include_paths=True,
                                        override_num_blocks=max(1, math.ceil(len(paths) / 256)))
        ds = ds.map_batches(_decode_batch, batch_size=256,
                            fn_kwargs={"channels": shape[0], "size": (shape[2], shape[1])})
        ds = ds.map_batches(_Predictor, fn_constructor_args=(checkpoint_bytes, threads),
                            batch_size=batch_size, concurrency=count, num_cpus=each)
        row = {str(p): i for i, p in enumerate(paths)}
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            rows = [row[p] for p in batch["path"]]
            writer.write(batch["path"], batch["probabilities"],
                         None if labels is None else labels[rows])
    except Exception as err:  # noqa: BLE001 - Ray wraps the tasks' errors
        found = _data_error(err)
        if found is not None:
            raise DataError(str(found)) from None
        raise
    finally:
        if started_here:
            ray.shutdown()
