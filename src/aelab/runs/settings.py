"""A run's configuration put together: the registry's defaults for the model, then a JSON or TOML file, then
overrides, every value checked (aelab.config reads and checks the settings; this module knows the models)."""

from __future__ import annotations

from pathlib import Path

from aelab.config import DERIVED, SECTIONS, RunConfig, locate, read_file, set_value
from aelab.data.load import DataConfig
from aelab.errors import UserError
from aelab.models import new_config
from aelab.training.train import TrainConfig


def default_config(model_name: str) -> RunConfig:
    if not isinstance(model_name, str):
        raise UserError(f"model_name must be a model's name (see `aelab models`), not {model_name!r}")
    return RunConfig(model_name, DataConfig(), new_config(model_name), TrainConfig())


def from_dict(d: dict) -> RunConfig:
    """A run's saved configuration (config.json, a weights file's metadata), checked as a fresh one is."""
    if not isinstance(d, dict) or not all(isinstance(d.get(s, {}), dict) for s in SECTIONS):
        raise UserError("a run configuration is a JSON object with data, model and train objects, not "
                        f"{type(d).__name__ if not isinstance(d, dict) else 'this'}")
    unknown = sorted(set(d) - {"model_name", *SECTIONS})
    if "model_name" not in d or unknown:  # a config.json of something else is not a run of defaults
        raise UserError(f"a run configuration names its model_name and holds only {', '.join(SECTIONS)}; "
                        f"this one {'holds ' + repr(unknown[0]) if unknown else 'names no model_name'}")
    config = default_config(d.get("model_name", "ae"))
    for key, value in getattr(config.model, "saved_without", {}).items():  # settings added since: as it trained
        if key not in d.get("model", {}):
            setattr(config.model, key, value)
    for section in SECTIONS:
        for key, value in d.get(section, {}).items():
            set_value(config, f"{section}.{key}", value)
    config.check()
    return config


def resolve(model_name: str | None, file: str | Path | None = None, overrides: dict[str, object] | None = None
            ) -> RunConfig:
    """Defaults, then the file's settings (flat or in [data]/[model]/[train] sections), then overrides."""
    loaded = read_file(file) if file else {}
    config = default_config(model_name or loaded.get("model_name", "ae"))
    for key, value in loaded.items():
        if key == "model_name":
            continue
        if key in SECTIONS and isinstance(value, dict):
            for sub, v in value.items():  # a run's config.json is a settings file too: its shape is the data's
                set_value(config, f"{key}.{sub}", v)
        else:
            set_value(config, key, value)
    for key, value in (overrides or {}).items():
        _set_chosen(config, key, value)
    config.check()
    return config


def _set_chosen(config: RunConfig, key: str, value) -> None:
    """A setting chosen on the command line; the input shape and its loss come from the data, never from a choice."""
    owner, name = locate(config, key)
    if owner is config.model and name in DERIVED:
        raise UserError(f"model.{name} is taken from the data; drop the setting {key!r}")
    set_value(config, key, value)
