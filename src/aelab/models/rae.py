"""Regularised autoencoder (Ghosh, Sajjadi, Vergari, Black & Schoelkopf 2020): a deterministic autoencoder with the
VAE's noise replaced by explicit regularisers: loss = recon + beta |z|^2 / 2 + lambd * R, per image (recon summed,
nats for images), where R smooths the decoder: the squared L2 norm of its weights (RAE-L2), or the squared Frobenius
norm of its Jacobian at the code (RAE-GP), estimated with one random projection per image (Hutchinson:
E_v |J^T v|^2 = |J|_F^2, v ~ N(0, I)). Its codes have no prior to draw from: it is made generative ex post, by a
density fitted to the training codes (their section 4)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aelab.errors import UserError
from aelab.models.base import AEConfig, Autoencoder
from aelab.devices import batch_draw, draw

REGULARISERS = ("l2", "gp")


@dataclass
class RAEConfig(AEConfig):
    beta: float = 1e-4      # weight of |z|^2 / 2, which keeps the code space bounded
    lambd: float = 1e-7     # weight of the decoder's regulariser
    regulariser: str = "l2"  # "l2": squared norm of the decoder's weights; "gp": of its Jacobian (gradient penalty)

    def check(self) -> None:
        super().check()
        if self.regulariser not in REGULARISERS:
            raise UserError(f"unknown regulariser {self.regulariser!r}; use --set regulariser=l2 or regulariser=gp")
        if not (self.beta >= 0 and self.lambd >= 0):
            raise UserError(f"beta and lambd must be >= 0, not {self.beta} and {self.lambd}; e.g. --set beta=1e-4")


class RegularisedAutoencoder(Autoencoder):
    """Regularised deterministic AE: recon + beta |z|^2/2 + lambd * (decoder L2, or its Jacobian's norm)."""

    Config = RAEConfig

    def loss(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.code(x)
        out = self.decoder(z)
        recon = self.recon_error_per_input(out, x).mean()
        code = 0.5 * z.float().pow(2).sum(1).mean()
        if self.config.regulariser == "l2":
            decoder = sum(p.pow(2).sum() for name, p in self.decoder.named_parameters() if name.endswith("weight"))
        else:
            decoder = self.jacobian_norm(z, out)
        return {"loss": recon + self.config.beta * code + self.config.lambd * decoder, "recon": recon,
                "code": code, "decoder": decoder}

    def jacobian_norm(self, z: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """The batch's mean |J^T v|^2, J the Jacobian of the decoded input (probabilities, or vectors) at the code z,
        one draw v ~ N(0, I) per input: |J|_F^2 in expectation."""
        training = torch.is_grad_enabled()
        with torch.enable_grad():
            if not z.requires_grad:  # evaluated under no_grad: the same penalty, differentiated here only
                z = z.detach().requires_grad_()
                out = self.decoder(z)
            v = batch_draw(len(z), lambda m: draw(torch.randn, (m, *out.shape[1:]), out.device))
            grad, = torch.autograd.grad((self.output(out) * v).sum(), z, create_graph=training)
        return grad.pow(2).sum(1).mean()
