"""The one table of flags: `aelab train`'s flags, the estimator's parameters and a resume's allowed changes all read
it, so the command line and the estimator set the same setting for the same name by construction."""

from __future__ import annotations

import pytest

from aelab.cli import _overrides, build_parser
from aelab.errors import UserError
from aelab.flags import ESTIMATOR_PARAMETERS, FLAGS, RESUMABLE, check_resumable, flag_of, resumable_flags
from aelab.runs.settings import resolve

# a value for every flag, none of them a default: a flag read as another setting shows
VALUES = {"epochs": 3, "latent": 5, "batch_size": 7, "lr": 0.5, "seed": 11, "data": "x.npy", "arch": "conv",
          "hidden": "16,8", "precision": "bf16", "grid_every": 0, "device": "cpu"}
NOT_SETTINGS = {"help", "model", "config", "set", "rgb", "out", "resume", "overwrite", "threads", "log"}


def _options(command: str) -> dict[str, str]:
    """The flags of one command: option string -> its argparse dest."""
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    return {s: a.dest for a in sub._actions for s in a.option_strings if s.startswith("--")}


def test_every_setting_flag_of_train_is_in_the_table_and_no_other():
    options = _options("train")
    assert {dest for dest in options.values() if dest not in NOT_SETTINGS} == set(FLAGS)
    for name, setting in FLAGS.items():
        assert options[flag_of(setting)] == name
    for command, own in (("sweep", {"grid"}), ("info", set())):  # their setting flags are the table's too
        assert {d for d in _options(command).values() if d not in NOT_SETTINGS | own} <= set(FLAGS), command


def test_the_cli_and_the_estimator_set_the_same_settings():
    from aelab.estimators import Autoencoder

    assert VALUES.keys() == FLAGS.keys()
    argv = ["train"] + [x for name, v in VALUES.items() for x in (f"--{name.replace('_', '-')}", str(v))]
    cli = resolve("ae", None, _overrides(build_parser().parse_args(argv)))
    assert {name: _value(cli, FLAGS[name]) for name in FLAGS} == {**VALUES, "hidden": (16, 8)}
    estimator = Autoencoder(**{name: VALUES[name] for name in ESTIMATOR_PARAMETERS}).run_config()
    assert set(ESTIMATOR_PARAMETERS) <= set(Autoencoder().get_params())
    for name in ESTIMATOR_PARAMETERS:
        assert _value(estimator, FLAGS[name]) == _value(cli, FLAGS[name]) == VALUES[name], name


def _value(config, setting: str):
    section, name = setting.split(".")
    return getattr(getattr(config, section), name)


def test_resume_names_its_flags_once_and_refuses_the_rest_in_one_line():
    assert set(RESUMABLE) <= set(FLAGS.values())
    assert resumable_flags() == ["--epochs", "--lr", "--precision", "--device"]
    check_resumable({"train.epochs": 4, "train.lr": 1e-4})
    with pytest.raises(UserError, match=r"drop model\.latent, --config \(only --epochs, --lr, --precision and "
                                        r"--device may change\)$"):
        check_resumable({"model.latent": 3, "train.lr": 1e-4}, ["--config"])
