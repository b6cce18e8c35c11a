"""The model registry: a name for each model family, so the CLI, tests and reports loop over it."""

from aelab.models.aae import AdversarialAutoencoder
from aelab.models.base import AEConfig, Autoencoder, summary
from aelab.models.betavae import BetaVAE
from aelab.models.cae import ContractiveAutoencoder
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


def picture_names() -> set[str]:
    """The file names of every registered model's pictures."""
    return {name for cls in MODELS.values() for name in cls.pictures}


__all__ = ["MODELS", "AEConfig", "Autoencoder", "build", "model_class", "picture_names", "summary"]
