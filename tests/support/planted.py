"""A known answer for sparse autoencoders, shared by the tests and the benchmarks (which put tests/ on sys.path):
vectors made from a planted dictionary, and how well a learned dictionary matches it."""

from __future__ import annotations

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


def recovered(found: np.ndarray, planted: np.ndarray) -> np.ndarray:
    """For each planted atom (rows), the best cosine similarity with any found atom (rows, any length)."""
    found = found.reshape(len(found), -1)
    found = found / np.linalg.norm(found, axis=1, keepdims=True).clip(1e-12)
    return (planted @ found.T).max(1)
