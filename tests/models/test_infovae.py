"""InfoVAE: alpha = 0, lambd = 1 is the VAE's loss to the bit; alpha = 1 drops the KL; its MMD pulls the codes to the
prior; bad settings refused in one line."""

from __future__ import annotations

import torch

from support.models import refusal, stepper, tiny


def test_infovae_with_alpha_0_lambd_1_has_the_vaes_loss_to_the_bit(fashion_slice):
    x = fashion_slice[0].floats(slice(0, 64))
    losses = []
    for name in ("vae", "infovae"):
        _, model = tiny(name, **{"model.alpha": 0.0, "model.lambd": 1.0} if name == "infovae" else {})
        torch.manual_seed(5)  # the same reparameterisation draws; the infovae's prior draws come after
        losses.append(model.loss(x))
    vae, info = losses
    assert all(torch.equal(vae[k], info[k]) for k in vae) and info["mmd"].isfinite()


def test_infovae_with_alpha_1_weighs_only_the_mmd(fashion_slice):
    _, model = tiny("infovae", **{"model.alpha": 1.0, "model.lambd": 50.0})
    terms = model.loss(fashion_slice[0].floats(slice(0, 64)))
    assert torch.allclose(terms["loss"], terms["recon"] + 50.0 * terms["mmd"])


def test_infovae_mmd_pulls_the_codes_towards_the_prior(fashion_slice, one_thread):
    def mmd_after(lambd):
        _, model = tiny("infovae", **{"model.lambd": lambd})
        trainer = stepper(model, lr=3e-3)
        for i in range(15):
            trainer.step(fashion_slice[0].floats(slice(i * 64, (i + 1) * 64)))
        torch.manual_seed(0)
        return model.loss(fashion_slice[1].floats(slice(0, 256)))["mmd"].item()
    assert mmd_after(1000.0) < mmd_after(1.0)


def test_infovae_refuses_bad_settings_in_one_line():
    assert "alpha" in refusal("infovae", {"alpha": 0.0, "lambd": 0.5})
