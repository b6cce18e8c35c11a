"""The dropout autoencoder: its train loss is measured in eval mode too, and it refuses what it cannot do."""

from __future__ import annotations

import json

from aelab.cli import main
from support.models import train_in_process


def test_dropout_cli_reports_eval_mode_train_loss(tmp_path, slice_npz, capsys):
    run = train_in_process(tmp_path, slice_npz, "dropout", "--epochs", "1", "--batch-size", "128", "--set", "rate=0.5")
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    # dropout on while training makes the running train loss worse than the same images in eval mode
    assert record["train_loss"] > record["train_eval_loss"]
    assert main(["sample", str(run), "--sampler", "prior", "--out", str(tmp_path / "x.png")]) == 2
    assert main(["denoise", str(run), str(slice_npz), "--out", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err
    assert "has no prior to draw from" in err and "not trained to remove noise" in err
    assert not (tmp_path / "x.png").exists()
