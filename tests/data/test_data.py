"""IDX reading, dataset lookup, and the downloader against a local HTTP server."""
import gzip
import hashlib
import http.server
import threading

import numpy as np
import pytest

from nnjit.data import (DataError, DownloadError, dataset_info, download_file, load_dataset,
                        load_split, read_idx, to_float, write_idx)
from nnjit.data.datasets import DatasetInfo


@pytest.mark.parametrize("name", ["images-idx3-ubyte", "images-idx3-ubyte.gz"])
def test_idx_round_trip(tmp_path, name, rng):
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / name, images)
    np.testing.assert_array_equal(read_idx(tmp_path / name), images)


def test_idx_header_is_parsed_by_hand(tmp_path):
    raw = bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3]) + bytes(range(6))
    (tmp_path / "f").write_bytes(raw)
    np.testing.assert_array_equal(read_idx(tmp_path / "f"), [[0, 1, 2], [3, 4, 5]])


@pytest.mark.parametrize("content,match", [
    (b"\x01\x02\x08\x01" + b"\0\0\0\x01" + b"x", "magic"),
    (bytes([0, 0, 0x0D, 1, 0, 0, 0, 1, 1, 2, 3, 4]), "type code"),
    (bytes([0, 0, 8, 1, 0, 0, 0, 5, 1, 2]), "truncated"),
    (bytes([0, 0, 8, 3, 0, 0]), "header"),
])
def test_idx_rejects_malformed_files(tmp_path, content, match):
    (tmp_path / "bad").write_bytes(content)
    with pytest.raises(DataError, match=match):
        read_idx(tmp_path / "bad")


def test_truncated_gzip_is_reported(tmp_path, rng):
    write_idx(tmp_path / "x.gz", rng.integers(0, 256, size=(50, 28, 28), dtype=np.uint8))
    data = (tmp_path / "x.gz").read_bytes()
    (tmp_path / "x.gz").write_bytes(data[:len(data) // 2])
    with pytest.raises(DataError, match="gzip"):
        read_idx(tmp_path / "x.gz")


def test_to_float_is_the_documented_scaling():
    x = to_float(np.array([[[0, 255], [51, 102]]], dtype=np.uint8))
    assert x.dtype == np.float32 and x.shape == (1, 1, 2, 2)
    np.testing.assert_allclose(x[0, 0], [[0, 1], [0.2, 0.4]], rtol=1e-6)


def make_split(folder, split, n, rng, gz=True, labels_n=None):
    from nnjit.data.datasets import SPLIT_FILES
    folder.mkdir(parents=True, exist_ok=True)
    images_stem, labels_stem = SPLIT_FILES[split]
    ext = ".gz" if gz else ""
    write_idx(folder / (images_stem + ext), rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8))
    write_idx(folder / (labels_stem + ext), rng.integers(0, 10, size=labels_n or n, dtype=np.uint8))


@pytest.mark.parametrize("sub", ["", "mnist"])
def test_load_dataset_finds_both_layouts(tmp_path, sub, rng):
    make_split(tmp_path / sub, "train", 30, rng)
    make_split(tmp_path / sub, "test", 20, rng, gz=False)
    data = load_dataset("mnist", tmp_path, download=False)
    assert data.x_train.shape == (30, 1, 28, 28) and data.y_test.shape == (20,)


def test_split_test_and_train_limit(tmp_path, rng):
    make_split(tmp_path, "test", 50, rng)
    data = load_dataset("mnist", tmp_path, split_test=40, train_limit=25, download=False)
    assert (len(data.x_train), len(data.x_test)) == (25, 10)
    assert "test part split" in data.description and "first 40" in data.description \
        and "first 25 training" in data.description
    with pytest.raises(DataError, match="--split-test"):
        load_dataset("mnist", tmp_path, split_test=50, download=False)


def test_count_mismatch_and_missing_folder(tmp_path, rng):
    make_split(tmp_path, "test", 30, rng, labels_n=29)
    with pytest.raises(DataError, match="30 images but .* 29 labels"):
        load_split(tmp_path / "t10k-images-idx3-ubyte.gz", tmp_path / "t10k-labels-idx1-ubyte.gz", 10)
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("mnist", tmp_path / "nope")


def test_missing_files_without_download_say_where_it_looked(tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset("mnist", tmp_path, download=False)
    assert str(tmp_path) in str(err.value) and "t10k-images-idx3-ubyte" in str(err.value)


def test_unknown_dataset():
    with pytest.raises(DataError, match="known: mnist, fashion-mnist"):
        dataset_info("cifar")


class Server:
    """A local HTTP server whose answer per path a test sets: (status, body, claimed length)."""

    def __init__(self):
        self.routes = {}
        routes = self.routes

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                status, body, length = routes.get(self.path, (404, b"not found", None))
                self.send_response(status)
                self.send_header("Content-Length", str(length if length is not None else len(body)))
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def md5(data):
    return hashlib.md5(data).hexdigest()


def test_download_success_is_verified_and_complete(server, tmp_path):
    body = gzip.compress(b"payload" * 1000)
    server.routes["/f.gz"] = (200, body, None)
    download_file(server.url + "/f.gz", tmp_path / "f.gz", md5(body), show_progress=False)
    assert (tmp_path / "f.gz").read_bytes() == body
    assert list(tmp_path.iterdir()) == [tmp_path / "f.gz"]


@pytest.mark.parametrize("route,match", [
    ((200, b"tampered", None), "checksum mismatch"),
    ((200, b"short", 5000), "cut short|failed"),
    ((500, b"boom", None), "HTTP 500"),
])
def test_failed_downloads_leave_no_file(server, tmp_path, route, match):
    server.routes["/f.gz"] = route
    with pytest.raises(DownloadError, match=match):
        download_file(server.url + "/f.gz", tmp_path / "f.gz", md5(b"the real file"), show_progress=False)
    assert list(tmp_path.iterdir()) == []


def test_unreachable_mirror_is_reported(tmp_path):
    with pytest.raises(DownloadError, match="cannot connect"):
        download_file("http://127.0.0.1:9/f.gz", tmp_path / "f.gz", "0" * 32, show_progress=False)


def test_dataset_download_through_mirrors(server, tmp_path, rng, monkeypatch):
    from nnjit.data import datasets

    src = tmp_path / "src"
    make_split(src, "train", 12, rng)
    make_split(src, "test", 8, rng)
    files = {p.name: p.read_bytes() for p in src.iterdir()}
    for name, body in files.items():
        server.routes["/good/" + name] = (200, body, None)
    info = DatasetInfo("tiny", tuple("0123456789"), ("unused",), {n: md5(b) for n, b in files.items()})
    monkeypatch.setitem(datasets.DATASETS, "tiny", info)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    # The first mirror has nothing (404), the second one works.
    data = load_dataset("tiny", data_dir, mirrors=[server.url + "/bad/", server.url + "/good/"],
                        show_progress=False)
    assert data.x_train.shape == (12, 1, 28, 28)
    assert sorted(p.name for p in (data_dir / "tiny").iterdir()) == sorted(files)


def test_cifar10_download_through_mirrors_is_checked_and_extracted(server, tmp_path, monkeypatch):
    from nnjit.data import cifar
    from synthetic import write_cifar_archive

    write_cifar_archive(tmp_path / "src.tar.gz", n_per_batch=4)
    body = (tmp_path / "src.tar.gz").read_bytes()
    server.routes["/good/cifar-10-python.tar.gz"] = (200, body, None)
    server.routes["/corrupt/cifar-10-python.tar.gz"] = (200, body[:-1] + b"x", None)
    monkeypatch.setattr(cifar, "ARCHIVE_MD5", md5(body))
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with pytest.raises(DataError, match="MD5|checksum|md5"):
        load_dataset("cifar10", data_dir, mirrors=[server.url + "/corrupt/"], show_progress=False)
    assert not (data_dir / "cifar10" / "cifar-10-python.tar.gz").exists()
    data = load_dataset("cifar10", data_dir, mirrors=[server.url + "/bad/", server.url + "/good/"],
                        show_progress=False)
    assert data.x_train.shape == (20, 3, 32, 32) and data.class_names[0] == "airplane"
    assert (data_dir / "cifar10" / "cifar-10-batches-py" / "batches.meta").is_file()
