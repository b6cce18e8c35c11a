"""A run's settings read, typed and checked (aelab.config): values from the command line's strings or a file's types
coerced to each field's type, bare or qualified keys, and a bad key, value or file refused in one line."""

from __future__ import annotations

import pytest

from aelab.config import parse_settings, read_file, set_value
from aelab.errors import UserError
from aelab.runs.settings import default_config


def test_strings_and_file_values_become_the_fields_types():
    config = default_config("ae")
    for key, value in (("hidden", "32,16"), ("model.latent", "7"), ("lr", "2e-3"), ("train.grid_every", 0.0),
                       ("train.cuda_graph", "yes")):
        set_value(config, key, value)
    assert config.model.hidden == (32, 16) and config.model.latent == 7 and config.train.lr == 0.002
    assert config.train.grid_every == 0 and config.train.cuda_graph is True
    for key, value, words in (("latent", "2.5", "takes an integer"), ("lr", "nan", "takes a finite number"),
                              ("cuda_graph", "maybe", "takes bool"), ("model.nothing", 1, "unknown setting"),
                              ("epochs", True, "takes an integer")):
        with pytest.raises(UserError, match=words):
            set_value(config, key, value)


def test_files_hold_an_object_of_settings_in_toml_or_json(tmp_path):
    (tmp_path / "s.toml").write_text('latent = 4\n[train]\nepochs = 3\n')
    assert read_file(tmp_path / "s.toml") == {"latent": 4, "train": {"epochs": 3}}
    (tmp_path / "s.json").write_text('[1, 2]')
    for path, words in ((tmp_path / "s.json", "holds a list, not an object of settings"),
                        (tmp_path / "none.toml", "does not exist")):
        with pytest.raises(UserError, match=words):
            read_file(path)
    (tmp_path / "bad.toml").write_text("latent = = 4")
    with pytest.raises(UserError, match="is not valid TOML"):
        parse_settings(tmp_path / "bad.toml", "settings")
