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


def is_generative(model: Autoencoder) -> bool:
    """Whether the model draws new images with model.sample(n)."""
    return callable(getattr(model, "sample", None))


def is_denoising(model: Autoencoder) -> bool:
    """Whether the model was trained on corrupted inputs with clean targets (it overrides `corrupt`)."""
    return type(model).corrupt is not Autoencoder.corrupt


__all__ = ["MODELS", "AEConfig", "Autoencoder", "build", "is_denoising", "is_generative", "model_class", "summary"]
