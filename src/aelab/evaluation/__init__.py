"""Evaluation: the test measures and code quality (evaluate), the Frechet distance (frechet), the PCA and
logistic-PCA baselines (baselines)."""
