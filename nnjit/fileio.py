"""Writing files so that a crash leaves either the old file or the new one."""
from __future__ import annotations

import errno
import os
import re
import stat
import tempfile

import numpy as np


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically; see :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically.

    The bytes go to a temporary file in the same folder, which is fsynced and
    then renamed over ``path`` (rename is atomic within a file system); the
    folder is fsynced too so the rename itself survives a power cut.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def regular_file_size(path: str | os.PathLike, limit: int | None = None) -> int:
    """The size in bytes of ``path``, which must be a regular file of at most
    ``limit`` bytes. Raises OSError otherwise: a device (``/dev/zero``), a FIFO
    or a folder would be read without end, or never answer."""
    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):
        raise OSError(errno.EINVAL, "not a regular file (a device, FIFO or folder)")
    if limit is not None and info.st_size > limit:
        raise OSError(errno.EFBIG, f"{info.st_size:,} bytes, more than the {limit:,} allowed")
    return info.st_size


def read_bounded(path: str | os.PathLike, limit: int, mode: str = "rb"):
    """The contents of the regular file ``path`` of at most ``limit`` bytes (bytes,
    or str for mode "r", UTF-8); OSError otherwise (see :func:`regular_file_size`)."""
    size = regular_file_size(path, limit)
    with open(path, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
        # read(n) reserves n: the file's size, never the limit. (A file growing
        # meanwhile is cut there: what is read stays bounded.)
        return f.read(size)


def read_npy_header(f) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, Fortran order, dtype) from the header of the .npy stream ``f``, left
    at the data's start; ValueError (or EOFError) for a stream that is not .npy or
    of a version numpy's format module does not read (1.0 and 2.0)."""
    version = np.lib.format.read_magic(f)
    reader = {(1, 0): np.lib.format.read_array_header_1_0,
              (2, 0): np.lib.format.read_array_header_2_0}.get(version)
    if reader is None:
        raise ValueError(f"unsupported .npy version {version}")
    return reader(f)


def read_npy(path: str | os.PathLike, limit: int) -> np.ndarray:
    """A .npy array of at most ``limit`` bytes of data, read only after its header
    has been checked against the file: ValueError for a file that is empty, not
    .npy, holds objects, or whose header declares more or fewer values than it
    holds (``np.load`` allocates what the header declares first); OSError as
    :func:`regular_file_size`."""
    size = regular_file_size(path)
    with open(path, "rb") as f:
        try:
            shape, fortran, dtype = read_npy_header(f)
        except (EOFError, ValueError) as err:
            raise ValueError(f"not a .npy array ({err or 'empty file'})") from None
        if dtype.hasobject:
            raise ValueError("holds Python objects, not numbers")
        count = int(np.prod(shape, dtype=object))
        need, held = count * dtype.itemsize, size - f.tell()
        if need != held:
            raise ValueError(f"its header declares {count:,} values ({need:,} bytes) of "
                             f"shape {shape}, the file holds {held:,} bytes")
        if need > limit:
            raise ValueError(f"{need:,} bytes of data, more than the {limit:,} allowed")
        data = np.fromfile(f, dtype, count)
    return data.reshape(shape, order="F" if fortran else "C")


#: What :func:`atomic_write_bytes` names its temporary files (``mkstemp``: the
#: target's name, a dot, 8 random characters, ".tmp").
_TEMP_NAME = re.compile(r".+\.[A-Za-z0-9_]{8}\.tmp$")


def remove_stale_temp_files(folder: str | os.PathLike) -> list[str]:
    """Delete the temporary files that writes killed mid-way (SIGKILL, power cut)
    left in ``folder``; return their names. Call it only while no other process
    writes there (holding the folder's :class:`FolderLock`)."""
    removed = []
    for name in os.listdir(folder):
        full = os.path.join(folder, name)
        if _TEMP_NAME.match(name) and os.path.isfile(full):
            os.remove(full)
            removed.append(name)
    return removed


LOCK_NAME = ".nnjit-train.lock"


class FolderLock:
    """Exclusive use of a folder by one process (a training run's checkpoint folder).

    ``flock`` on ``folder/.nnjit-train.lock``: the kernel releases it when the
    holder exits in any way, SIGKILL included, so a crashed run never leaves
    the folder locked; the file keeps the holder's PID for the message. On
    systems without ``fcntl`` the lock is a no-op.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = os.fspath(folder)
        self._file = None

    def acquire(self) -> None:
        """Take the lock; OSError (errno EBUSY) naming the holder's PID if another process has it."""
        try:
            import fcntl
        except ImportError:  # Windows
            return
        path = os.path.join(self.folder, LOCK_NAME)
        f = open(path, "a+", encoding="utf-8")  # noqa: SIM115  (held until release())
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise OSError(errno.EBUSY, f"{self.folder} is in use by another training run "
                                       f"(pid {holder}); wait for it, or use another "
                                       "--checkpoint-folder") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._file = f

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing drops the flock
            self._file = None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
