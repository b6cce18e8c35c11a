"""A run's whole configuration: which model, its data, model and training settings.

Settings come from the dataclass defaults, then a JSON or TOML file, then command-line overrides. A key may be
bare (`latent`) or qualified (`model.latent`); unknown keys and values of the wrong type are rejected with the
list of what is known, as nanoGPT's configurator does.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import typing
from dataclasses import dataclass
from pathlib import Path

from aelab.data import DataConfig
from aelab.errors import UserError
from aelab.models import AEConfig, model_class
from aelab.train import TrainConfig

SECTIONS = ("data", "model", "train")


@dataclass
class RunConfig:
    model_name: str
    data: DataConfig
    model: AEConfig
    train: TrainConfig

    def to_dict(self) -> dict:
        return {"model_name": self.model_name, **{s: dataclasses.asdict(getattr(self, s)) for s in SECTIONS}}

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        config = default_config(d.get("model_name", "ae"))
        for section in SECTIONS:
            for key, value in d.get(section, {}).items():
                set_value(config, f"{section}.{key}", value)
        return config

    def describe(self) -> str:
        return "\n".join(f"  {s}.{k} = {v}" for s in SECTIONS for k, v in dataclasses.asdict(getattr(self, s)).items())


def default_config(model_name: str) -> RunConfig:
    return RunConfig(model_name, DataConfig(), model_class(model_name).Config(), TrainConfig())


def _fields(obj) -> dict[str, type]:
    return typing.get_type_hints(type(obj))


def _locate(config: RunConfig, key: str) -> tuple[object, str]:
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
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError
            return str(value)
    except UserError:
        raise
    except (ValueError, TypeError):
        pass
    raise UserError(f"setting {key!r} takes {getattr(kind, '__name__', kind)}, not {value!r}")


def set_value(config: RunConfig, key: str, value) -> None:
    owner, name = _locate(config, key)
    setattr(owner, name, _coerce(value, _fields(owner)[name], key))


def read_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} does not exist; check the path")
    try:
        text = path.read_text()
        return tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"config file {path} is not valid {'TOML' if path.suffix == '.toml' else 'JSON'}: {e}") from None


def resolve(model_name: str | None, file: str | Path | None = None, overrides: dict[str, object] | None = None
            ) -> RunConfig:
    """Defaults, then the file's settings (flat or in [data]/[model]/[train] sections), then overrides."""
    loaded = read_file(file) if file else {}
    config = default_config(model_name or loaded.get("model_name", "ae"))
    for key, value in loaded.items():
        if key == "model_name":
            continue
        if key in SECTIONS and isinstance(value, dict):
            for sub, v in value.items():
                set_value(config, f"{key}.{sub}", v)
        else:
            set_value(config, key, value)
    for key, value in (overrides or {}).items():
        set_value(config, key, value)
    return config
