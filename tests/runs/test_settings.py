"""A run's settings put together (runs.settings): the model's defaults, then a config file, then flags, then --set,
each over the one before."""

from __future__ import annotations

import json

from support.process import aelab


def test_config_file_then_flags_then_set(subset_npz, tmp_path):
    (tmp_path / "settings.toml").write_text(f'[data]\npath = "{subset_npz}"\n[model]\nlatent = 4\n'
                                            '[train]\nepochs = 3\nlr = 0.002\n')
    out = tmp_path / "run"
    result = aelab("train", "--config", tmp_path / "settings.toml", "--epochs", 1, "--set", "hidden=32,16",
                   "--grid-every", 0, "--threads", 1, "--out", out)
    assert result.returncode == 0, result.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["latent"] == 4 and config["model"]["hidden"] == [32, 16]
    assert config["train"]["epochs"] == 1 and config["train"]["lr"] == 0.002
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    assert not (out / "grids").exists()
