"""A known answer for sparse autoencoders, shared by the tests and the benchmarks (which put tests/ on sys.path):
vectors made from a planted dictionary, and how well a learned dictionary matches it."""

from __future__ import annotations

from statistics import NormalDist

import numpy as np


def planted_dictionary(n: int, d: int = 64, atoms: int = 256, active: int = 5, noise: float = 0.01, seed: int = 0
                       ) -> tuple[np.ndarray, np.ndarray]:
    """`atoms` random unit vectors in d dimensions, and n vectors each a mix of `active` distinct atoms with weights
    uniform in [0.5, 1.5], plus N(0, noise^2) per value. Returns (vectors (n, d) float32, atoms (atoms, d) float64)."""
    rng = np.random.default_rng(seed)
    dictionary = rng.standard_normal((atoms, d))
    dictionary /= np.linalg.norm(dictionary, axis=1, keepdims=True)
    picked = np.argsort(rng.random((n, atoms)), axis=1)[:, :active]        # distinct atoms per vector
    weights = rng.uniform(0.5, 1.5, (n, active, 1))
    vectors = (weights * dictionary[picked]).sum(1) + noise * rng.standard_normal((n, d))
    return vectors.astype(np.float32), dictionary


def hard_dictionary(n: int, d: int = 96, atoms: int = 512, active: float = 8, offset: float = 3.0, rank: int = 8,
                    noise: float = 0.01, seed: int = 0, chunk: int = 20_000, weak_atoms: bool = True
                    ) -> tuple[np.ndarray, np.ndarray]:
    """A harder planted dictionary, as real activations are: every vector shares one direction of norm `offset`
    (in atoms' norms); atom i fires with a Zipf-like probability 1 / (i + 10)^0.7, scaled to `active` on average
    (the rarest of 512 fire about 16 times less often than the commonest); their firing is correlated through `rank`
    shared Gaussian factors (a Gaussian copula, each atom loading about 0.5 on them); a firing atom's weight is its
    own mean (uniform in [0.5, 2]) times |1 + 0.2 N(0, 1)|, so some atoms are always weak; without `weak_atoms`,
    each firing's weight is uniform in [0.5, 2] (every atom has weak and strong firings); plus N(0, noise^2) per
    value. Returns (vectors (n, d) float32, atoms (atoms, d) float64)."""
    rng = np.random.default_rng(seed)
    dictionary = rng.standard_normal((atoms, d))
    dictionary /= np.linalg.norm(dictionary, axis=1, keepdims=True)
    means = rng.uniform(0.5, 2.0, atoms)
    loadings = rng.standard_normal((atoms, rank)) * 0.5 / np.sqrt(rank)
    own = np.sqrt(1 - (loadings ** 2).sum(1).clip(max=0.99))
    shift = rng.standard_normal(d)
    shift *= offset / np.linalg.norm(shift)
    p = 1 / (np.arange(atoms) + 10.0) ** 0.7
    cut = np.array([NormalDist().inv_cdf(q) for q in np.minimum(p * active / p.sum(), 0.5)])
    vectors = np.empty((n, d), np.float32)
    for start in range(0, n, chunk):  # float64 intermediates of `chunk` rows at a time
        m = min(chunk, n - start)
        fires = rng.standard_normal((m, rank)) @ loadings.T + rng.standard_normal((m, atoms)) * own < cut
        if weak_atoms:
            weights = fires * means * np.abs(1 + 0.2 * rng.standard_normal((m, atoms)))
        else:
            weights = fires * rng.uniform(0.5, 2.0, (m, atoms))
        vectors[start:start + m] = weights @ dictionary + shift + noise * rng.standard_normal((m, d))
    return vectors, dictionary


def recovered(found: np.ndarray, planted: np.ndarray) -> np.ndarray:
    """For each planted atom (rows), the best cosine similarity with any found atom (rows, any length)."""
    found = found.reshape(len(found), -1)
    found = found / np.linalg.norm(found, axis=1, keepdims=True).clip(1e-12)
    return (planted @ found.T).max(1)
