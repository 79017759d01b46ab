"""The per-epoch CSV: older layouts upgraded, rows of uncheckpointed epochs dropped on resume."""
import numpy as np

from nnjit.trainer import CSV_COLUMNS, LossLog, read_loss_log


def test_a_csv_from_before_validation_columns_is_upgraded_on_resume(tmp_path):
    path = tmp_path / "loss.csv"
    path.write_text(",".join(CSV_COLUMNS[:7]) + "\n1,10,0.5,0.4,0.9,1.0,100.0\n")
    log = LossLog(path, append=True)
    log.add(2, 20, 0.3, 0.2, 0.95, 1.0, 100.0, 0.25, 0.93)
    log.close()
    columns = read_loss_log(path)
    assert columns["epoch"] == [1, 2] and columns["val_accuracy"][1] == 0.93
    assert np.isnan(columns["val_accuracy"][0])


def test_resuming_drops_rows_of_epochs_after_the_checkpoint(tmp_path):
    path = tmp_path / "loss.csv"
    log = LossLog(path)
    for epoch in (1, 2, 3):  # epoch 3 logged, then killed before its checkpoint
        log.add(epoch, 10 * epoch, 0.5, 0.4, 0.9, 1.0, 100.0)
    log.close()
    with open(path, "a") as f:
        f.write("4,40,0.1")  # a row torn by the kill
    log = LossLog(path, append=True, up_to_epoch=2)
    log.add(3, 30, 0.3, 0.2, 0.95, 1.0, 100.0)
    log.close()
    columns = read_loss_log(path)
    assert columns["epoch"] == [1, 2, 3] and columns["train_loss"][2] == 0.3
    assert path.read_text().splitlines()[0] == ",".join(CSV_COLUMNS)
