"""The model registry: a name for each model family, so the CLI, tests and reports loop over it.

A variant outside this package joins it with one call, `register(name, cls)`, in a module that the AELAB_PLUGINS
environment variable names (docs/extending.md).
"""

from pathlib import Path

from aelab.models.aae import AdversarialAutoencoder
from aelab.models.base import AEConfig, Autoencoder, summary
from aelab.models.betavae import BetaVAE
from aelab.models.cae import ContractiveAutoencoder
from aelab.models.contract import register_in
from aelab.models.dae import DenoisingAutoencoder
from aelab.models.dropout import DropoutAutoencoder
from aelab.models.sparse import SparseAutoencoder
from aelab.models.vae import VariationalAutoencoder
from aelab.models.vqvae import VQVAE

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
}


def model_class(name: str) -> type[Autoencoder]:
    from aelab.errors import UserError

    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)} (see `aelab models`)")
    return MODELS[name]


def build(name: str, config: AEConfig) -> Autoencoder:
    return model_class(name)(config)


def register(name: str, cls: type[Autoencoder]) -> type[Autoencoder]:
    """Add a variant under `name`: `aelab train NAME`, the estimator, reports, `aelab compare` and export then take
    it with no other edit. Call it from a module named in AELAB_PLUGINS so that every `aelab` process has it."""
    return register_in(MODELS, name, cls, Autoencoder, "model", "aelab.models.Autoencoder")


_loaded_files: set[str] = set()
PLUGINS = "AELAB_PLUGINS"  # modules (dotted names, or .py files) to import, separated by os.pathsep


def load_plugins(value: str | None = None) -> None:
    """Import each module AELAB_PLUGINS names, once: each registers its variants (`register`)."""
    import importlib
    import importlib.util
    import os

    from aelab.errors import UserError

    value = os.environ.get(PLUGINS, "") if value is None else value
    for entry in filter(None, (e.strip() for e in value.split(os.pathsep))):
        try:
            if not entry.endswith(".py"):
                importlib.import_module(entry)
                continue
            path = os.path.abspath(entry)
            if path not in _loaded_files:  # a file is imported once per process, as a module would be
                spec = importlib.util.spec_from_file_location(f"aelab_plugin_{Path(path).stem}", path)
                spec.loader.exec_module(importlib.util.module_from_spec(spec))
                _loaded_files.add(path)
        except (ImportError, OSError, SyntaxError) as e:
            raise UserError(f"{PLUGINS} names {entry!r}, which cannot be imported ({e.__class__.__name__}: "
                            f"{str(e)[:200]}); fix it or drop it from {PLUGINS}") from None


def picture_names() -> set[str]:
    """The file names of every registered model's pictures."""
    return {name for cls in MODELS.values() for name in cls.pictures}


__all__ = ["MODELS", "AEConfig", "Autoencoder", "build", "load_plugins", "model_class", "picture_names", "register",
           "summary"]

load_plugins()  # last: a plugin imports this module's names
