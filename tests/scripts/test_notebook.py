"""docs/examples/quickstart.ipynb executed cell by cell in a Jupyter kernel (an error in
any cell fails the test), in a temp folder, on the real MNIST test set."""
import nbformat

from conftest import MNIST_DIR, ROOT

NOTEBOOK = ROOT / "docs" / "examples" / "quickstart.ipynb"


def test_quickstart_notebook_runs(tmp_path, monkeypatch, mnist_test_set):
    from nbclient import NotebookClient

    monkeypatch.setenv("NNJIT_MNIST_DIR", str(MNIST_DIR))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "test accuracy" in text and "largest difference from nnjit" in text, text
    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.data]
    assert len(images) == 2  # the History plot and the predictions
    assert (tmp_path / "quickstart.onnx").stat().st_size > 1000
