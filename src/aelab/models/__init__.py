"""The model registry: a name for each model family, so the CLI, tests and reports loop over it.

A variant outside this package joins it with one call, `register(name, cls)`, in a module that the AELAB_PLUGINS
environment variable names (docs/extending.md).
"""

import sys
from pathlib import Path

from aelab.errors import UserError
from aelab.models.aae import AdversarialAutoencoder
from aelab.models.base import AEConfig, Autoencoder, summary
from aelab.models.betavae import BetaVAE
from aelab.models.btcvae import BetaTCVAE
from aelab.models.cae import ContractiveAutoencoder
from aelab.models.dae import DenoisingAutoencoder
from aelab.models.dropout import DropoutAutoencoder
from aelab.models.fsq import FSQAutoencoder
from aelab.models.infovae import InfoVAE
from aelab.models.iwae import IWAE
from aelab.models.rae import RegularisedAutoencoder
from aelab.models.rqvae import RQVAE
from aelab.models.sparse import SparseAutoencoder
from aelab.models.vae import VariationalAutoencoder
from aelab.models.vamp import VampVAE
from aelab.models.vqvae import VQVAE
from aelab.models.wae import WassersteinAutoencoder

MODELS: dict[str, type[Autoencoder]] = {
    "ae": Autoencoder,
    "dae": DenoisingAutoencoder,
    "dropout": DropoutAutoencoder,
    "aae": AdversarialAutoencoder,
    "vae": VariationalAutoencoder,
    "betavae": BetaVAE,
    "cae": ContractiveAutoencoder,
    "vqvae": VQVAE,
    "sae": SparseAutoencoder,
    "iwae": IWAE,
    "vamp": VampVAE,
    "wae": WassersteinAutoencoder,
    "infovae": InfoVAE,
    "btcvae": BetaTCVAE,
    "rae": RegularisedAutoencoder,
    "fsq": FSQAutoencoder,
    "rqvae": RQVAE,
}


def model_class(name: str) -> type[Autoencoder]:
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)} (see `aelab models`)")
    return MODELS[name]


def build(name: str, config: AEConfig) -> Autoencoder:
    return model_class(name)(config)


def register(name: str, cls: type[Autoencoder]) -> type[Autoencoder]:
    """Add a variant under `name`: `aelab train NAME`, the estimator, reports, `aelab compare` and export then take
    it with no other edit. Call it from a module named in AELAB_PLUGINS so that every `aelab` process has it."""

    if not isinstance(name, str) or not name.isidentifier():
        raise UserError(f"a model's name is a word of letters, digits and underscores, not {name!r}")
    if not (isinstance(cls, type) and issubclass(cls, Autoencoder)):
        raise UserError(f"register {name!r} with a subclass of aelab.models.Autoencoder, not {cls!r}")
    if name in RESERVED:
        raise UserError(f"the model name {name!r} is a baseline's (`aelab compare {name}` runs it); register yours "
                        "under another")
    if MODELS.get(name, cls) is not cls:
        raise UserError(f"the model name {name!r} is taken by {MODELS[name].__name__}; register yours under another")
    MODELS[name] = cls
    return cls


# the baselines' names (aelab.evaluation.baselines.BASELINES): `aelab compare` takes them, so no model may
RESERVED = frozenset({"pca", "logistic_pca"})
_loaded_files: set[str] = set()
PLUGINS = "AELAB_PLUGINS"  # modules (dotted names, or .py files) to import, separated by os.pathsep


def load_plugins(value: str | None = None) -> None:
    """Import each module AELAB_PLUGINS names, once: each registers its variants (`register`)."""
    import importlib
    import importlib.util
    import os

    value = os.environ.get(PLUGINS, "") if value is None else value
    for entry in filter(None, (e.strip() for e in value.split(os.pathsep))):
        fix = f"fix it or drop it from {PLUGINS}"
        try:
            if not entry.endswith(".py"):
                importlib.import_module(entry)
                continue
            path = os.path.abspath(entry)
            if path not in _loaded_files:  # a file is imported once per process, as a module would be
                name = f"aelab_plugin_{Path(path).stem}"
                spec = importlib.util.spec_from_file_location(name, path)
                module = importlib.util.module_from_spec(spec)
                # entered while it runs, as an import would: @dataclass looks its module up under
                # `from __future__ import annotations`
                sys.modules[name] = module
                try:
                    spec.loader.exec_module(module)
                except BaseException:
                    del sys.modules[name]
                    raise
                _loaded_files.add(path)
        except UserError:  # register's own refusal: already one line that names the fix
            raise
        except SystemExit as e:  # a plugin may not end every aelab command, silently or not
            raise UserError(f"{PLUGINS} names {entry!r}, which calls sys.exit({e.code!r}) when imported; a plugin "
                            f"only registers its variants: {fix}") from None
        except Exception as e:  # noqa: BLE001  whatever a plugin raises, one line that names it
            raise UserError(f"{PLUGINS} names {entry!r}, which cannot be imported ({e.__class__.__name__}: "
                            f"{str(e)[:200]}); {fix}") from None


def new_config(name: str) -> AEConfig:
    """The default settings of the model `name`: a plugin's Config with a field that has no default is one line."""
    cls = model_class(name)
    try:
        return cls.Config()
    except TypeError as e:
        raise UserError(f"model {name!r}: {cls.Config.__name__}() cannot be made from its defaults ({e}); give every "
                        "field a default") from None


def check_config(name: str, config: AEConfig) -> None:
    """config.check(); a ValueError of a plugin's check is one line, as a UserError is."""
    try:
        config.check()
    except UserError:
        raise
    except ValueError as e:
        raise UserError(f"model {name!r}: {str(e)[:200]}; fix the setting") from None


def picture_names() -> set[str]:
    """The file names of every registered model's pictures."""
    return {name for cls in MODELS.values() for name in cls.pictures}


__all__ = ["MODELS", "AEConfig", "Autoencoder", "build", "check_config", "load_plugins", "model_class", "new_config",
           "picture_names", "register", "summary"]

load_plugins()  # last: a plugin imports this module's names
