"""The model registry: a name for each model family, so the CLI, tests and reports loop over it."""

from aelab.models.base import AEConfig, Autoencoder, summary

MODELS: dict[str, type[Autoencoder]] = {
    "ae": Autoencoder,
}


def model_class(name: str) -> type[Autoencoder]:
    from aelab.errors import UserError

    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)} (see `aelab models`)")
    return MODELS[name]


def build(name: str, config: AEConfig) -> Autoencoder:
    return model_class(name)(config)


__all__ = ["MODELS", "AEConfig", "Autoencoder", "build", "model_class", "summary"]
