"""Loss primitives, each written once. Images are (b, c, h, w); `x` holds targets in [0, 1]."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOG_2PI = math.log(2 * math.pi)


def bce_mean(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean per-pixel sigmoid cross-entropy with logits: the chapter's reconstruction loss."""
    return F.binary_cross_entropy_with_logits(logits.float(), x)


def mse_mean(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean squared error per element: the reconstruction loss of real-valued (standardised) vectors."""
    return F.mse_loss(out.float(), x)


def bce_per_image(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of each image, shape (b,): the Bernoulli negative log-likelihood in nats."""
    return F.binary_cross_entropy_with_logits(logits.float(), x, reduction="none").flatten(1).sum(1)


def entropy_per_image(x: torch.Tensor) -> torch.Tensor:
    """Binary entropy of the targets summed per image, shape (b,): the least cross-entropy any model can reach
    on grey (non-binary) targets, since BCE(p, x) = H(x) + KL(x || p)."""
    x = x.double()
    h = -(torch.xlogy(x, x) + torch.xlogy(1 - x, 1 - x))
    return h.flatten(1).sum(1)


def squared_error_per_image(probs: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Summed squared error of each image, shape (b,)."""
    return (probs.float() - x).pow(2).flatten(1).sum(1)


def gaussian_kl_per_dim(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, 1)) of each code dimension, shape (b, d); Appendix B of Kingma & Welling."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per row, shape (b,): the dimensions' KLs summed."""
    return gaussian_kl_per_dim(mu, logvar).sum(1)


def log_normal(z: torch.Tensor, mu: torch.Tensor | float = 0.0, logvar: torch.Tensor | float = 0.0) -> torch.Tensor:
    """log N(z; mu, exp(logvar)) summed over the last dimension."""
    logvar = torch.as_tensor(logvar, dtype=z.dtype)
    return -0.5 * (LOG_2PI + logvar + (z - mu).pow(2) / logvar.exp()).sum(-1)


def psnr_per_image(probs: torch.Tensor, x: torch.Tensor, sse: torch.Tensor | None = None) -> torch.Tensor:
    """Peak signal-to-noise ratio of each image in dB (peak 1), shape (b,); `sse`: its squared error per image,
    if already at hand."""
    sse = squared_error_per_image(probs, x) if sse is None else sse
    return 10 * torch.log10(x[0].numel() / sse.clamp_min(1e-10))


def gan_loss(logits: torch.Tensor, real: bool) -> torch.Tensor:
    """Mean cross-entropy of a discriminator's logits against the label "real" (1) or "fake" (0)."""
    return F.binary_cross_entropy_with_logits(logits.float(), torch.full_like(logits.float(), float(real)))


def iwae_bound(log_weights: torch.Tensor) -> torch.Tensor:
    """The importance-weighted bound L_k = log (1/k) sum_i w_i per column of (k, b) log-weights, shape (b,);
    Burda, Grosse & Salakhutdinov (2015), eq. 8. With k = 1 it is the one-sample ELBO; it rises towards
    log p(x) as k grows."""
    return torch.logsumexp(log_weights.double(), dim=0) - math.log(log_weights.shape[0])


def squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a_i - b_j|^2, (n, m), by the expansion, which has a gradient where rows coincide (cdist's has none)."""
    return (a.pow(2).sum(1, keepdim=True) - 2 * a @ b.T + b.pow(2).sum(1)).clamp_min(0)


def mmd2(a: torch.Tensor, b: torch.Tensor, kernel) -> torch.Tensor:
    """Unbiased squared maximum mean discrepancy between samples a (n, d) and b (m, d) under kernel(squared
    distances); Gretton et al. (2012), eq. 3. Zero in expectation when a and b come from one distribution (so it
    may come out slightly negative)."""
    n, m = len(a), len(b)
    kaa, kbb = kernel(squared_distances(a, a)), kernel(squared_distances(b, b))
    # a single row has no pairs: its own term is left out (0) rather than divided by zero
    within = lambda k, size: (k.sum() - k.diagonal().sum()) / max(size * (size - 1), 1)
    return within(kaa, n) + within(kbb, m) - 2 * kernel(squared_distances(a, b)).mean()


def rbf_mmd2(a: torch.Tensor, b: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """mmd2 in fp64 under the kernel exp(-|u - v|^2 / (2 bandwidth^2))."""
    return mmd2(a.double(), b.double(), lambda d2: torch.exp(-d2 / (2 * bandwidth ** 2)))


IMQ_SCALES = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


def imq_mmd2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """mmd2 under the inverse multiquadric kernel C / (C + |u - v|^2), C = 2 d s for each scale s of IMQ_SCALES,
    summed: Tolstikhin et al. (2018), section 4, with C = 2 d sigma^2 for a prior N(0, I) (sigma = 1); its heavy
    tails keep a gradient for codes far from the prior, where a Gaussian kernel's vanishes."""
    c = 2 * a.shape[1]
    return mmd2(a, b, lambda d2: sum(c * s / (c * s + d2) for s in IMQ_SCALES))
