"""A layer's activations read back: each unit's top-activating rows, and an SAE trained on them whose report shows
each unit's top-activating source images (tests/runs/test_activations.py writes them)."""

from __future__ import annotations

import numpy as np
import torch


def test_top_activating_is_the_brute_force_answer(acts):
    from aelab.data.activations import top_activating
    from aelab.models.sparse import SAEConfig, SparseAutoencoder

    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(latent=32, k=4, in_shape=(64,), recon_loss="mse")).eval()
    with torch.no_grad():  # units 0 and 2 never fire: skipped for the next ones that do
        sae.encoder[-1].bias[[0, 2]] = -1e6
    codes = sae.encode(torch.from_numpy(np.load(acts)))
    firing = (codes > 0).any(0).nonzero().squeeze(1)
    assert 0 not in firing and 2 not in firing and len(firing) >= 5
    units, rows, values = top_activating(sae, acts, units=5, per_unit=3, batch_size=777)
    assert units.tolist() == firing[:5].tolist()
    best = codes[:, units].topk(3, dim=0)
    np.testing.assert_allclose(values, best.values.T.numpy(), rtol=1e-6)
    assert (codes[torch.from_numpy(rows).T, torch.from_numpy(units)] == best.values).all()  # ties may swap rows


def test_sae_report_shows_top_activating_images(acts_sae):
    page = (acts_sae / "report.html").read_text()
    assert "top_activating.png" in page and "layer encoder.6" in page
