"""Data-parallel training over MPI (mpi4py): one model replica per process.

Every rank walks the same shuffled global batches (the order is a function of
the seed and the epoch) and takes its contiguous share of each: rank r of R
gets images [r*n//R, (r+1)*n//R) of a batch of n, so shares differ by at most
one image and a rank may get none of a batch smaller than R. Each rank's
gradient, the mean over its share, is scaled by its share's size over n, and
one ``Allreduce`` over the flat gradient buffer (every parameter's gradient
lives in it) sums them into the gradient of the global batch's mean loss; every
rank then applies the same optimizer step, so the parameters stay identical.

Batch norm normalises with each rank's own batch statistics (PyTorch's
DistributedDataParallel without SyncBatchNorm); its running statistics are
rank 0's, broadcast after every step (DistributedDataParallel's
``broadcast_buffers``), so every rank predicts and saves the same model.
Dropout masks come from each rank's own generator. Augmentation draws for
the whole global batch and each rank applies its share of the draws, as one
process would.

A run started by ``mpiexec`` (or ``srun --mpi=pmix``) is recognised by the
launcher's environment (``PMI_SIZE``, ``OMPI_COMM_WORLD_SIZE``, ``PMIX_RANK``).
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback

import numpy as np

from .errors import NnjitError

#: Variables an MPI launcher sets in every process it starts.
LAUNCHER_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK")


class MPIGroup:
    """The ranks of one data-parallel run (``comm``: an mpi4py communicator,
    default COMM_WORLD): ``rank``, ``size``, ``local_size`` (ranks on this
    node), and the collectives training needs."""

    def __init__(self, comm=None):
        from mpi4py import MPI

        self._mpi = MPI
        self.comm = comm or MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED)
        self.local_size = node.Get_size()
        node.Free()

    def share(self, n: int) -> tuple[int, int]:
        """This rank's images [start, stop) of a global batch of n."""
        return self.rank * n // self.size, (self.rank + 1) * n // self.size

    def sum_(self, array: np.ndarray) -> None:
        """Sum ``array`` (C-contiguous) over the ranks, in place on every rank."""
        self.comm.Allreduce(self._mpi.IN_PLACE, array, op=self._mpi.SUM)

    def broadcast_(self, array: np.ndarray) -> None:
        """Rank 0's ``array`` into every rank's, in place."""
        self.comm.Bcast(array, root=0)


def launched_by_mpi() -> bool:
    """True when an MPI launcher started this process as one of several."""
    return any(os.environ.get(v) not in (None, "", "1") for v in LAUNCHER_VARIABLES[:2]) \
        or "PMIX_RANK" in os.environ


def mpi_group() -> MPIGroup | None:
    """The MPI group this process belongs to, or None when it runs alone.
    NnjitError when a launcher started it but mpi4py is not installed."""
    if not launched_by_mpi():
        return None
    try:
        group = MPIGroup()
    except ImportError:
        raise NnjitError('started by an MPI launcher, but mpi4py is not installed: pip install '
                         '"nnjit[mpi]"') from None
    return group if group.size > 1 else None


def threads_per_rank(group: MPIGroup | None) -> int:
    """The default thread count: the cores, shared among the ranks on this node."""
    cores = os.cpu_count() or 1
    return max(1, cores // group.local_size) if group is not None else cores


class BufferSync:
    """Rank 0's buffers (batch norms' running statistics) sent to every rank in
    one broadcast: packed into one array, sent, unpacked."""

    def __init__(self, group: MPIGroup, buffers: list[np.ndarray]):
        self.group, self.buffers = group, buffers
        self.packed = np.empty(sum(b.size for b in buffers), np.float64)

    def __call__(self) -> None:
        if not self.buffers:
            return
        at = 0
        for b in self.buffers:
            self.packed[at:at + b.size] = b.reshape(-1)
            at += b.size
        self.group.broadcast_(self.packed)
        at = 0
        for b in self.buffers:
            b.reshape(-1)[...] = self.packed[at:at + b.size]
            at += b.size


@contextlib.contextmanager
def abort_job_on_error():
    """Around a program that may run as one rank of several: an exception or a
    nonzero exit ends every rank of the job within seconds (its message printed
    and flushed first), instead of leaving the others blocked. Does nothing in
    a process no MPI launcher started."""
    if not launched_by_mpi():
        yield
        return
    try:
        yield
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        if code:
            _abort(code)
        raise
    except BaseException:  # noqa: BLE001  (printed, then the job ends)
        # One write for the whole message: printed line by line, the launcher
        # forwarded the first line and lost the rest when the abort came.
        sys.stderr.write(traceback.format_exc())
        _abort(1)
        raise


#: Seconds between the last output and the abort: the launcher forwards each
#: rank's output from a pipe, and the abort ends its forwarding too.
ABORT_GRACE = 0.3


def _abort(code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        from mpi4py import MPI
    except ImportError:
        return
    if MPI.Is_initialized() and not MPI.Is_finalized():
        time.sleep(ABORT_GRACE)
        MPI.COMM_WORLD.Abort(code)
