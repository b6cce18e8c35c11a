"""The adversarial autoencoder: its commands on a conv model."""

from __future__ import annotations

import json

from aelab.cli import main
from support.models import eval_json, train_in_process


def test_aae_cli_conv(tmp_path, slice_npz, capsys):
    run = train_in_process(tmp_path, slice_npz, "aae", "--epochs", "1", "--batch-size", "128", "--arch", "conv", "--set", "channels=8,16",
                           "--set", "prior=mixture")
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert {"train_recon", "train_disc", "train_gen", "test_disc"} <= record.keys()
    metrics = eval_json(run, capsys)
    assert 0 <= metrics["disc_accuracy"] <= 1 and metrics["mmd"] > metrics["mmd_prior_baseline"]
    assert main(["sample", str(run), "-n", "10", "--out", str(tmp_path / "samples")]) == 0
    assert len(list((tmp_path / "samples").glob("*.png"))) == 10
