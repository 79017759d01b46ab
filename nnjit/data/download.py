"""Downloading a file safely: progress bar, checksum, atomic rename."""
from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request

from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from .idx import DataError

CHUNK = 1 << 16


class DownloadError(DataError):
    """A download failed: no network, HTTP error, short transfer or checksum mismatch."""


def download_file(url: str, dest: str | os.PathLike, md5: str, show_progress: bool = True,
                  timeout: float = 30.0) -> None:
    """Fetch ``url`` into ``dest``, verifying the MD5 of the bytes received.

    The bytes go to a temporary file beside ``dest``, which is fsynced and
    renamed over ``dest`` only when the transfer is complete (as long as the
    server's Content-Length says) and the checksum matches; on any failure the
    temporary file is removed, so ``dest`` is either absent or whole.

    Raises
    ------
    DownloadError
        naming the URL and what went wrong.
    """
    dest = os.fspath(dest)
    folder = os.path.dirname(os.path.abspath(dest))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=os.path.basename(dest) + ".", suffix=".part")
    digest = hashlib.md5(usedforsecurity=False)
    received = 0
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            expected = response.headers.get("Content-Length")
            expected = int(expected) if expected and expected.isdigit() else None
            with Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(),
                          TransferSpeedColumn(), transient=True, disable=not show_progress) as bar:
                task = bar.add_task(os.path.basename(dest), total=expected)
                while True:
                    chunk = response.read(CHUNK)
                    if not chunk:
                        break
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(task, advance=len(chunk))
            if expected is not None and received != expected:
                raise DownloadError(f"{url}: transfer cut short ({received} of {expected} bytes)")
            if digest.hexdigest() != md5:
                raise DownloadError(f"{url}: checksum mismatch (md5 {digest.hexdigest()}, "
                                    f"expected {md5}); the file was not kept")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    except urllib.error.HTTPError as err:
        raise DownloadError(f"{url}: server answered HTTP {err.code} {err.reason}") from None
    except urllib.error.URLError as err:
        raise DownloadError(f"{url}: cannot connect ({err.reason})") from None
    except (OSError, ValueError, http.client.HTTPException) as err:
        if isinstance(err, DownloadError):
            raise
        raise DownloadError(f"{url}: download failed after {received} bytes ({err})") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
