"""Per-image predictions as a table, CSV or Parquet: ``path``, ``label`` (images in
class folders only), ``predicted`` (a class name), ``probability`` (of the
predicted class) and one ``p_<class>`` column per class."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from .data import DataError

FORMATS = (".csv", ".parquet")


def check_output(path) -> Path:
    """``path`` as a Path when it names a .csv or .parquet file in an existing
    folder (and pyarrow is there for Parquet); DataError otherwise."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise DataError(f"--out {path}: must end in .csv or .parquet")
    if not path.resolve().parent.is_dir():
        raise DataError(f"--out {path}: folder {path.resolve().parent} does not exist")
    if path.suffix.lower() == ".parquet":
        try:
            import pyarrow.parquet  # noqa: F401
        except ImportError:
            raise DataError("writing Parquet needs pyarrow: pip install pyarrow (or write "
                            ".csv)") from None
    return path


class PredictionWriter:
    """Writes predictions batch by batch to ``path`` (.csv or .parquet). The file
    appears whole when the writer closes without an error (a temporary file
    before), so a crash leaves no half table under the final name."""

    def __init__(self, path, class_names: list[str], labelled: bool):
        self.path = check_output(path)
        self.class_names = list(class_names)
        self.labelled = labelled
        self.columns = ["path", *(["label"] if labelled else []), "predicted", "probability",
                        *(f"p_{name}" for name in self.class_names)]
        self.tmp = self.path.with_name(f".{self.path.name}.tmp")
        self.rows = 0
        #: labelled: counts of (true class, predicted class) over the rows written
        self.confusion = np.zeros((len(self.class_names),) * 2, np.int64) if labelled else None
        if self.path.suffix.lower() == ".csv":
            self._file = open(self.tmp, "w", newline="", encoding="utf-8")
            self._csv = csv.writer(self._file)
            self._csv.writerow(self.columns)
        else:
            self._file, self._parquet = None, None

    def write(self, paths, probabilities: np.ndarray, labels: np.ndarray | None = None) -> None:
        """Append rows: ``paths`` (N,), float32 ``probabilities`` (N, classes), and
        integer ``labels`` (N,) as class indices when the writer is labelled."""
        probabilities = np.asarray(probabilities, np.float32)
        predicted = probabilities.argmax(axis=1)
        names = np.array(self.class_names, dtype=object)
        table = {"path": [str(p) for p in paths]}
        if self.labelled:
            labels = np.asarray(labels, np.int64)
            table["label"] = list(names[labels])
            np.add.at(self.confusion, (labels, predicted), 1)
        table["predicted"] = list(names[predicted])
        table["probability"] = probabilities[np.arange(len(predicted)), predicted]
        for k, name in enumerate(self.class_names):
            table[f"p_{name}"] = probabilities[:, k]
        self.rows += len(predicted)
        if self._file is not None:
            # .9g: a float32 read back from the text is the same float32
            text = {c: v if c in ("path", "label", "predicted") else [format(x, ".9g") for x in v]
                    for c, v in table.items()}
            self._csv.writerows(zip(*(text[c] for c in self.columns)))
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        batch = pa.table({c: table[c] for c in self.columns})
        if self._parquet is None:
            self._parquet = pq.ParquetWriter(self.tmp, batch.schema)
        self._parquet.write_table(batch)

    def close(self, failed: bool = False) -> None:
        """Finish the file (or, ``failed``, remove the temporary one)."""
        if self._file is not None:
            self._file.close()
        elif self._parquet is not None:
            self._parquet.close()
        elif not failed:  # no rows: still a table, with its columns
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.table({c: [] for c in self.columns}), self.tmp)
        if failed:
            self.tmp.unlink(missing_ok=True)
        else:
            os.replace(self.tmp, self.path)

    def __enter__(self):
        return self

    def __exit__(self, kind, value, traceback):
        self.close(failed=kind is not None)
