"""A run's whole configuration: which model, its data, model and training settings.

Settings come from the dataclass defaults, then a JSON or TOML file, then command-line overrides (put together by
aelab.runs.settings, which asks the model registry for the model's defaults: this module knows no model). A key may be
bare (`latent`) or qualified (`model.latent`); unknown keys and values of the wrong type are rejected with the
list of what is known, as nanoGPT's configurator does. Each section checks its own limits (`Config.check`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import tomllib
import typing
from dataclasses import dataclass
from pathlib import Path

from aelab.errors import UserError

SECTIONS = ("data", "model", "train")
DERIVED = ("in_shape", "recon_loss")  # model settings the data decides
MAX_FILE_BYTES = 1 << 20  # a config file (or a run's config.json) holds a few settings, not megabytes


@dataclass
class RunConfig:
    model_name: str
    # each section's class lives beside what it sets up (aelab.runs.settings puts them together): this module
    # stands below the data, the models and the trainer, and imports no torch
    data: object   # aelab.data.load.DataConfig
    model: object  # the model's own Config, an AEConfig (aelab.runs.settings looks its class up in the registry)
    train: object  # aelab.training.train.TrainConfig

    def to_dict(self) -> dict:
        return {"model_name": self.model_name, **{s: dataclasses.asdict(getattr(self, s)) for s in SECTIONS}}

    def check(self) -> None:
        """Refuse settings that cannot work before anything is loaded or written; the model's own checks run
        again at build, where the data's image size is known."""
        self.data.check()
        try:
            self.model.check()
        except UserError:
            raise
        except ValueError as e:  # a plugin's check may raise a plain ValueError: still one line
            raise UserError(f"model {self.model_name!r}: {str(e)[:200]}; fix the setting") from None
        self.train.check()

    def describe(self) -> str:
        return "\n".join(f"  {s}.{k} = {v}" for s in SECTIONS for k, v in dataclasses.asdict(getattr(self, s)).items())


def _fields(obj) -> dict[str, type]:
    return _type_hints(type(obj))


@functools.cache  # evaluating a class's string annotations takes ~0.4 ms, and a config's every setting asks
def _type_hints(cls: type) -> dict[str, type]:
    return typing.get_type_hints(cls)


def locate(config: RunConfig, key: str) -> tuple[object, str]:
    if "." in key:
        section, name = key.split(".", 1)
        if section in SECTIONS and name in _fields(getattr(config, section)):
            return getattr(config, section), name
    else:
        owners = [s for s in SECTIONS if key in _fields(getattr(config, s))]
        if len(owners) == 1:
            return getattr(config, owners[0]), key
    known = ", ".join(f"{s}.{k}" for s in SECTIONS for k in _fields(getattr(config, s)))
    raise UserError(f"unknown setting {key!r} for model {config.model_name!r}; known settings: {known}")


def _coerce(value, kind, key: str):
    """A value from a file (typed) or the command line (a string) as the field's type."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    optional = type(None) in args
    if optional:
        if value is None or (isinstance(value, str) and value.lower() in ("", "none", "null")):
            return None
        kind = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(kind), typing.get_args(kind)
    try:
        if origin is tuple:
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(_coerce(v, args[0], key) for v in items if str(v).strip() != "")
        if kind is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind is int:  # an int64, as torch and numpy take it
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            if -2 ** 63 <= int(value) < 2 ** 63:
                return int(value)
            raise ValueError
        if kind is float:  # a finite number: no setting of aelab works with inf or nan
            if not isinstance(value, bool) and math.isfinite(float(value)):
                return float(value)
            raise ValueError
        if kind is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError
            return str(value)
    except UserError:
        raise
    except (ValueError, TypeError):
        pass
    what = {int: "an integer in [-2**63, 2**63)", float: "a finite number"}.get(kind, getattr(kind, "__name__", kind))
    raise UserError(f"setting {key!r} takes {what}, not {str(value)[:50]!r}")


def set_value(config: RunConfig, key: str, value) -> None:
    owner, name = locate(config, key)
    setattr(owner, name, _coerce(value, _fields(owner)[name], key))


def read_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} does not exist; check the path")
    return parse_settings(path, f"config file {path}")


def parse_settings(path: Path, source: str) -> dict:
    """The settings object of a JSON or TOML file, read with a size limit; anything else is one clear line."""
    kind = "TOML" if path.suffix == ".toml" else "JSON"
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
        if len(raw) > MAX_FILE_BYTES:
            raise UserError(f"{source} is over {MAX_FILE_BYTES // 1024} KiB; a settings file holds a few settings")
        loaded = tomllib.loads(raw.decode()) if kind == "TOML" else json.loads(raw)
    except (ValueError, RecursionError, OSError) as e:  # JSON, TOML and UTF-8 decoding errors are ValueErrors
        raise UserError(f"{source} is not valid {kind} ({str(e)[:200]}); fix or restore it") from None
    if not isinstance(loaded, dict):
        raise UserError(f"{source} holds a {type(loaded).__name__}, not an object of settings; write it as "
                        '{"model": {"latent": 30}, "train": {"epochs": 10}}')
    return loaded
