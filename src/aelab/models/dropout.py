"""Dropout autoencoder: the chapter's model with dropout after every hidden layer, active only while training."""

from __future__ import annotations

from dataclasses import dataclass

from aelab.errors import UserError
from aelab.models.base import AEConfig, Autoencoder


@dataclass
class DropoutConfig(AEConfig):
    rate: float = 0.2  # probability of zeroing each hidden unit while training

    def check(self) -> None:
        super().check()
        if not 0 <= self.rate < 1:
            raise UserError(f"dropout rate must lie in [0, 1), not {self.rate}")


class DropoutAutoencoder(Autoencoder):
    """Dropout AE: dropout between hidden layers (rate configurable) while training, off at evaluation."""

    Config = DropoutConfig

    def __init__(self, config: DropoutConfig):
        super().__init__(config, dropout=config.rate)
