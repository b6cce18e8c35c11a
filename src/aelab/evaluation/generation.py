"""How good samples are, in the 128 features of aelab's Fashion-MNIST classifier (evaluation.frechet):

- the Frechet distance of Gaussians fitted to sample and test features (Heusel et al. 2017), with its floor (the test
  set's distance from the training set);
- precision and recall of k-nearest-neighbour manifolds (Kynkaanniemi et al. 2019, k = 3): precision is the share
  of samples inside some real feature's ball (the ball around it reaching its k-th nearest real neighbour), recall
  the share of real features inside some sample's ball (balls of the samples among themselves);
- density and coverage (Naeem et al. 2020, k = 5): density counts the real balls each sample falls in, divided by
  k (about 1 when samples and real data come from one distribution), coverage is the share of real features whose
  ball holds at least one sample.

Balls are closed (a distance equal to the radius is inside), as the papers define them; distances come from
matrix products, so "equal" allows a relative 1e-9 of rounding (a point is its neighbour's neighbour exactly).
"""

from __future__ import annotations

import numpy as np
import torch

from aelab.evaluation.frechet import frechet_distance

PR_K, DC_K = 3, 5   # the papers' neighbourhood sizes
ROUNDING = 1 + 1e-9
SAMPLES = 10_000    # samples drawn to measure a sampler (never more than the test images they are compared with)
EVAL_SEED = 1234    # the draws measured come from their own generator: the same figures every time


def _distances(a: torch.Tensor, b: torch.Tensor, chunk: int):
    """(start, distances (c, len(b))) for chunks of a's rows: Euclidean, float64."""
    for s in range(0, len(a), chunk):
        yield s, torch.cdist(a[s:s + chunk], b)


def knn_radii(x: torch.Tensor, ks: tuple[int, ...] | int, chunk: int = 1000) -> dict[int, torch.Tensor] | torch.Tensor:
    """Each row's distance to its k-th nearest other row, (n,), for each k of `ks` (one pass for all)."""
    several = isinstance(ks, tuple)
    ks = ks if several else (ks,)
    out = {k: torch.empty(len(x), dtype=x.dtype) for k in ks}
    for s, d in _distances(x, x, chunk):
        nearest = d.topk(max(ks) + 1, dim=1, largest=False).values  # sorted; the row itself is the first, at 0
        for k in ks:
            out[k][s:s + len(d)] = nearest[:, k]
    return out if several else out[ks[0]]


def _rows(features) -> torch.Tensor:
    return torch.as_tensor(np.asarray(features), dtype=torch.float64)


def manifold_measures(real, fake, pr_k: int = PR_K, dc_k: int = DC_K, chunk: int = 1000) -> dict[str, float]:
    """Precision and recall (Kynkaanniemi et al. 2019, k = pr_k) and density and coverage (Naeem et al. 2020,
    k = dc_k) of fake features against real ones, (n, f) each: the radii of each set in one pass over it, then
    one pass over the fake x real distances for all four."""
    real, fake = _rows(real), _rows(fake)
    r_real = {k: v * ROUNDING for k, v in knn_radii(real, (pr_k, dc_k), chunk).items()}
    r_fake = knn_radii(fake, pr_k, chunk) * ROUNDING
    precise = torch.empty(len(fake), dtype=torch.bool)
    dense = torch.empty(len(fake), dtype=torch.int64)
    recalled = torch.zeros(len(real), dtype=torch.bool)
    nearest = torch.full((len(real),), torch.inf, dtype=torch.float64)
    for s, d in _distances(fake, real, chunk):                      # (c fakes, n real)
        precise[s:s + len(d)] = (d <= r_real[pr_k]).any(1)
        dense[s:s + len(d)] = (d <= r_real[dc_k]).sum(1)
        recalled |= (d <= r_fake[s:s + len(d), None]).any(0)
        nearest = torch.minimum(nearest, d.min(0).values)
    return {"precision": precise.double().mean().item(), "recall": recalled.double().mean().item(),
            "density": dense.sum().item() / (dc_k * len(fake)),
            "coverage": (nearest <= r_real[dc_k]).double().mean().item()}


def precision_recall(real, fake, k: int = PR_K) -> dict[str, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) of fake features against real ones."""
    measures = manifold_measures(real, fake, pr_k=k)
    return {key: measures[key] for key in ("precision", "recall")}


def density_coverage(real, fake, k: int = DC_K) -> dict[str, float]:
    """Density and coverage (Naeem et al. 2020) of fake features against real ones."""
    measures = manifold_measures(real, fake, dc_k=k)
    return {key: measures[key] for key in ("density", "coverage")}


def sample_measures(samples, net, test) -> dict[str, float]:
    """The Frechet distance, precision, recall, density and coverage of samples (n, 1, 28, 28) in [0, 1] against
    the test images, in the classifier's features."""
    fake, real = net.features(samples), net.features(test)
    return {"frechet": frechet_distance(fake, real), **manifold_measures(real, fake)}


def frechet_floor(net, test, train) -> float:
    """The test set's Frechet distance from the training set: the least a sampler can expect."""
    return frechet_distance(net.features(test), net.features(train))


def measurable(data) -> bool:
    """Whether the classifier can see a data set's images: 28x28 grey."""
    from aelab.evaluation.frechet import IMAGE_SHAPE

    return data.data_kind == "images" and tuple(data.shape) == IMAGE_SHAPE


def measure_sampler(sampler, net, test, samples: int = SAMPLES) -> dict:
    """A sampler's draws measured against as many test images (up to `samples`), from a fixed seed."""
    n = min(samples, len(test))
    drawn = sampler.draw(n, torch.Generator().manual_seed(EVAL_SEED)).detach().float().cpu()
    return {"sampler": sampler.name, "samples": n, **sample_measures(drawn, net, test.subset(n))}
