"""Writing files so that a crash leaves either the old file or the new one."""
from __future__ import annotations

import errno
import os
import tempfile


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
