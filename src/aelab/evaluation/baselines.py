"""Linear baselines with the autoencoders' surface: PCA and logistic PCA, in torch.

Both follow scikit-learn's conventions (`__init__` only stores parameters, `fit` returns self, learned state ends
in `_`) and keep the models' contract (aelab.models.contract.Model): `encode`, `decode`, `reconstruct` take an ImageSet,
uint8 or float images (n, c, h, w), (n, h, w) or flat rows (n, d), numpy or torch, and return a tensor for a tensor,
a numpy array for anything else; `evaluation` gives loss terms and reconstructions as the trainer measures models.
Fitted state saves to and loads from a safetensors file (never a pickle). aelab.estimators gives each of them, this
very class, the scikit-learn transformer's surface.
"""

from __future__ import annotations

import inspect
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from aelab.data.datasets import ImageSet
from aelab.errors import UserError
from aelab.models.contract import Defaults, same_kind
from aelab.models.losses import bce_mean, mse_mean
from aelab.storage import tensorfile

FORMAT = "aelab-baseline/1"


def _as_rows(x) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Images as float32 rows (n, d) in [0, 1], and the shape of one image."""
    if isinstance(x, ImageSet):
        x = x.images
    t = torch.as_tensor(np.asarray(x)) if not isinstance(x, torch.Tensor) else x
    t = t.float().div(255) if t.dtype == torch.uint8 else t.float()
    if t.ndim < 2:
        raise UserError(f"expected a batch of images (n, ...), not shape {tuple(t.shape)}")
    return t.reshape(t.shape[0], -1), tuple(t.shape[1:])


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


class _Baseline(Defaults):
    """Shared surface: shape checks, decode to image shape, reconstruct, the contract's evaluation, save/load."""

    _state: tuple[str, ...] = ()   # names of fitted tensors, saved as they are (the constructor's parameters as JSON)
    generative = False
    denoising = False
    pictures: dict[str, str] = {}
    prior_name = None
    device = torch.device("cpu")
    eps = 1e-6  # without logits, BCE is taken on the values clipped to [eps, 1 - eps]
    plain_sampling = True  # sampling_codes and decode_sampled are encode and decode (contract.Defaults)

    def _rows(self, x) -> torch.Tensor:
        self._check_fitted()
        rows, shape = _as_rows(x)
        if rows.shape[1] != self.mean_.numel():
            raise UserError(f"images of {rows.shape[1]} pixels do not fit this {type(self).__name__}, "
                            f"fitted on {self.mean_.numel()}-pixel images")
        return rows

    def _check_fitted(self) -> None:
        if not hasattr(self, "mean_"):
            raise UserError(f"this {type(self).__name__} is not fitted yet; call fit(train_images) first")

    def _images(self, rows: torch.Tensor) -> torch.Tensor:
        return rows.reshape(rows.shape[0], *self.image_shape_)

    def _codes(self, z) -> torch.Tensor:
        self._check_fitted()
        z_t = torch.as_tensor(np.asarray(z) if not isinstance(z, torch.Tensor) else z, dtype=torch.float32)
        if z_t.ndim != 2 or z_t.shape[1] != self.n_components:
            raise UserError(f"codes must have shape (n, {self.n_components}), not {tuple(z_t.shape)}")
        return z_t

    def reconstruct(self, x):
        """decode(encode(x)): images in x's shape."""
        return self.decode(self.encode(x))

    @property
    def code_shape(self) -> tuple[int, ...]:
        return (self.n_components,)

    @property
    def code_size(self) -> int:
        return self.n_components

    @property
    def in_shape(self) -> tuple[int, ...]:
        """The shape of one input it was fitted to."""
        self._check_fitted()
        return tuple(self.image_shape_)

    @property
    def data_kind(self) -> str:
        """Fitted to flat rows: vectors; else images."""
        return "vectors" if len(self.in_shape) == 1 else "images"

    def sampling_codes(self, x) -> torch.Tensor:
        return torch.as_tensor(self.encode(x)).float()

    def decode_sampled(self, z: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self.decode(z))

    def logits(self, x: torch.Tensor) -> torch.Tensor | None:
        """Reconstruction logits of images, in image shape; None for a method without them."""
        return None

    @torch.no_grad()
    def evaluation(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor | None]:
        """The loss (BCE for images, on clipped values where there are no logits; MSE for vectors fitted as flat
        rows), the reconstruction of float inputs x and its logits, if any."""
        logits = self.logits(x)
        values = torch.sigmoid(logits) if logits is not None else self.reconstruct(x).reshape(x.shape)
        if self.data_kind == "vectors":
            return {"loss": mse_mean(values, x)}, values, logits
        error = bce_mean(logits if logits is not None else torch.logit(values.clamp(self.eps, 1 - self.eps)), x)
        return {"loss": error}, values, logits

    def measures(self, test) -> dict:
        return {}

    def make_pictures(self, test) -> dict[str, np.ndarray]:
        return {}

    def eval(self) -> "_Baseline":
        """Nothing to switch off: a baseline has no dropout or noise."""
        return self

    def num_parameters(self) -> int:
        """Learned numbers a code needs to become an image: the mean and the components."""
        return self.mean_.numel() + self.components_.numel()

    def save(self, path: str | Path, **extra: str) -> Path:
        """The fitted state as safetensors; parameters, image shape and `extra` strings in its metadata."""
        self._check_fitted()
        meta = {"format": FORMAT, "class": type(self).__name__, "image_shape": json.dumps(self.image_shape_),
                "params": json.dumps({p: getattr(self, p) for p in inspect.signature(type(self)).parameters}),
                **extra}
        return tensorfile.write(path, {name: getattr(self, name) for name in self._state}, meta)


def load_baseline(path: str | Path) -> tuple["_Baseline", dict[str, str]]:
    """A fitted PCA or LogisticPCA from `save`, and the file's metadata."""
    fix = "delete it and refit the baseline"
    meta = tensorfile.metadata(Path(path), fix=fix)
    cls = {cls.__name__: cls for cls in BASELINES.values()}.get(meta.get("class", ""))
    if meta.get("format") != FORMAT or cls is None:
        raise UserError(f"{path} is not a saved aelab baseline; refit it")
    tensors, _ = tensorfile.load(Path(path), dict.fromkeys(cls._state), fix=fix)
    try:
        model = cls(**json.loads(meta["params"]))
        model.image_shape_ = tuple(json.loads(meta["image_shape"]))
    except (KeyError, ValueError, TypeError, RecursionError) as e:
        raise UserError(f"{path} holds parameters that cannot work ({e.__class__.__name__}: {str(e)[:200]}); it is "
                        f"damaged: {fix}") from None
    for name in cls._state:
        setattr(model, name, tensors[name])
    return model, meta


class PCA(_Baseline):
    """Principal component analysis of images (float64 covariance, scikit-learn's sign convention): the best rank-k
    linear reconstruction in squared error. Codes are the centred images' coordinates along the components; decoded
    images are not clipped to [0, 1].

    Fitted: mean_ (n_features,), components_ (k, n_features) orthonormal rows, explained_variance_ (k,): tensors
    here, numpy arrays in aelab.estimators.PCA (with n_features_in_)."""

    _state = ("mean_", "components_", "explained_variance_")

    def __init__(self, n_components: int = 30):
        self.n_components = n_components

    def fit(self, x, chunk_size: int = 10_000) -> "PCA":
        """Eigenvectors of the training covariance, accumulated in float64 a chunk at a time."""
        rows, self.image_shape_ = _as_rows(x)
        n, d = rows.shape
        if n < 2 or not 1 <= self.n_components <= min(n, d):
            raise UserError(f"PCA needs at least 2 images and 1 <= n_components <= min(images, pixels) = "
                            f"{min(n, d)}, not {self.n_components} components on n_samples={n}")
        mean = rows.double().mean(0)
        cov = torch.zeros(d, d, dtype=torch.float64)
        for s in _chunks(n, chunk_size):
            c = rows[s].double() - mean
            cov += c.T @ c
        values, vectors = torch.linalg.eigh(cov / (n - 1))  # ascending
        top = torch.argsort(values, descending=True)[:self.n_components]
        components = vectors[:, top].T
        # scikit-learn's sign convention (svd_flip): the largest-magnitude entry of each component is positive
        signs = torch.sign(components.gather(1, components.abs().argmax(1, keepdim=True)))
        self.mean_ = mean.float()
        self.components_ = (components * signs).float().contiguous()
        self.explained_variance_ = values[top].float()
        return self

    def encode(self, x):
        """Codes (n, k): coordinates of the centred images along the components."""
        return same_kind(x, (self._rows(x) - self.mean_) @ self.components_.T)

    def decode(self, z):
        """Images from codes; not clipped, so values may fall slightly outside [0, 1]."""
        return same_kind(z, self._images(self._codes(z) @ self.components_ + self.mean_))


class LogisticPCA(_Baseline):
    """Logistic PCA of images in the projection form of Landgraf & Lee (2015, "Dimensionality reduction for binary
    data through the projection of natural parameters"); the low-rank Bernoulli model of Collins, Dasgupta & Schapire
    (2001) and Schein, Saul & Ungar (2003).

    Pixels x in [0, 1] are Bernoulli means. The saturated model's natural parameters m*(2x-1) are centred by mu and
    projected onto k directions U (d, k); the model's natural parameters are

        theta = mu + (m*(2x-1) - mu) U U^T,   encode: z = (m*(2x-1) - mu) U,   decode: sigmoid(mu + z U^T),

    fitted by minimising the Bernoulli deviance (BCE) over mu and U with full-batch L-BFGS. U starts orthonormal
    (PCA of the saturated parameters) and is left free: the projection of new images stays one matrix product.
    With m=None, m is chosen from `m_grid` by held-out BCE on a subset of the training images.

    Fitted: mean_ (n_features,) = mu (the logit offset), components_ (k, n_features) = U^T, m_ (tensors here, numpy
    arrays and a number in aelab.estimators.LogisticPCA); loss_curve_ (mean BCE per image at each L-BFGS
    evaluation); m_scores_ (held-out BCE per pixel of each m tried, when m was chosen)."""

    _state = ("mean_", "components_", "m_")

    def __init__(self, n_components: int = 30, *, m: float | None = None,
                 m_grid: tuple[float, ...] = (3.0, 5.0, 8.0), max_iter: int = 200, chunk_size: int = 10_000,
                 seed: int = 0):
        self.n_components, self.m, self.m_grid = n_components, m, m_grid
        self.max_iter, self.chunk_size, self.seed = max_iter, chunk_size, seed

    def fit(self, x, verbose: bool = False) -> "LogisticPCA":
        rows, self.image_shape_ = _as_rows(x)
        n, d = rows.shape
        if not 1 <= self.n_components <= d or n < 2:
            raise UserError(f"logistic PCA needs at least 2 images and 1 <= n_components <= {d}, "
                            f"not {self.n_components} components on n_samples={n}")
        m = self.m if self.m is not None else self.choose_m(rows, verbose)
        if not m > 0:
            raise UserError(f"logistic PCA's m must be positive, not {m}")
        self.m_ = torch.tensor(float(m))
        self.mean_, components, self.loss_curve_ = _fit_projection(rows, self.n_components, m, self.max_iter,
                                                                   self.chunk_size, verbose)
        self.components_ = components.T.contiguous()
        return self

    def choose_m(self, rows: torch.Tensor, verbose: bool = False, subset: int = 5000, max_iter: int = 50) -> float:
        """The m of `m_grid` with the lowest BCE on held-out images, each fitted on a random training subset."""
        order = torch.randperm(rows.shape[0], generator=torch.Generator().manual_seed(self.seed))
        held = max(1, min(subset // 5, rows.shape[0] // 5))
        val, fit = rows[order[:held]], rows[order[held:held + subset]]
        scores = {}
        for m in self.m_grid:
            mean, u, _ = _fit_projection(fit, self.n_components, m, min(max_iter, self.max_iter), self.chunk_size)
            scores[m] = _deviance(val, mean, u, m, self.chunk_size)[0].item() / val.numel()
            if verbose:
                print(f"logistic PCA: m={m:g} held-out BCE per pixel {scores[m]:.5f}", flush=True)
        self.m_scores_ = scores
        return min(scores, key=scores.get)

    def _theta_rows(self, x) -> torch.Tensor:
        return self.m_ * (2 * self._rows(x) - 1) - self.mean_

    def encode(self, x):
        """Codes (n, k): centred saturated natural parameters projected on U."""
        return same_kind(x, self._theta_rows(x) @ self.components_.T)

    def decode_logits(self, z) -> torch.Tensor:
        """Natural parameters (logits) of the images, in image shape."""
        return self._images(self._codes(z) @ self.components_ + self.mean_)

    def decode(self, z):
        """Images (Bernoulli means in [0, 1]) from codes."""
        return same_kind(z, torch.sigmoid(self.decode_logits(z)))

    def logits(self, x) -> torch.Tensor:
        """Reconstruction logits of images, in image shape."""
        return self.decode_logits(self.encode(torch.as_tensor(x) if isinstance(x, np.ndarray) else x))


@torch.no_grad()
def _deviance(rows: torch.Tensor, mean: torch.Tensor, u: torch.Tensor, m: float, chunk_size: int,
              gradient: bool = False) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Summed BCE of theta = mean + (m(2x-1) - mean) U U^T against x, and its gradients in mean and U, a chunk
    at a time. The gradients are written out (autograd was 3x slower here): with R = sigmoid(theta) - x and
    C = m(2x-1) - mean, dL/dU = C^T R U + R^T C U and dL/dmean = (I - U U^T) R^T 1. C is never formed:
    C V = 2m X V - (m + mean) V for any V."""
    d, k = u.shape
    shift = m + mean                                  # (d,): C = 2m X - shift
    shift_u = shift @ u                               # (k,)
    total = torch.zeros((), dtype=torch.float64)
    grad_u, r_sum = torch.zeros(d, k), torch.zeros(d)
    for s in _chunks(rows.shape[0], chunk_size):
        x = rows[s]                                   # (b, d)
        a = (2 * m) * (x @ u) - shift_u               # (b, k) codes
        theta = torch.addmm(mean, a, u.T)             # (b, d) natural parameters
        # BCE with logits = softplus(theta) - x theta
        total += (F.softplus(theta).sum() - torch.dot(x.reshape(-1), theta.reshape(-1))).double()
        if gradient:
            r = theta.sigmoid_().sub_(x)              # (b, d) residual, in theta's memory
            r_u = r @ u                               # (b, k)
            grad_u += (2 * m) * (x.T @ r_u) - torch.outer(shift, r_u.sum(0)) + r.T @ a
            r_sum += r.sum(0)
    if not gradient:
        return total, None, None
    return total, r_sum - u @ (u.T @ r_sum), grad_u


def _fit_projection(rows: torch.Tensor, k: int, m: float, max_iter: int, chunk_size: int, verbose: bool = False,
                    warm_rows: int = 10_000) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """mean (d,) and U (d, k) minimising the mean BCE per image, by L-BFGS with a strong-Wolfe line search.
    On a large set, L-BFGS first runs on a random `warm_rows` subset (cheap steps, nearly the same optimum),
    then on every row."""
    n, d = rows.shape
    start = PCA(k).fit(m * (2 * rows - 1))  # PCA of the saturated natural parameters: U U^T a projection
    mean = start.mean_.clone()
    u = start.components_.T.clone().contiguous()
    curve: list[float] = []
    began = time.perf_counter()
    stages = [rows]
    if n > 2 * warm_rows:
        stages.insert(0, rows[torch.randperm(n, generator=torch.Generator().manual_seed(0))[:warm_rows]])
    for stage in stages:
        optimizer = torch.optim.LBFGS([mean, u], lr=1, max_iter=max_iter, history_size=20, tolerance_grad=1e-7,
                                      tolerance_change=1e-10, line_search_fn="strong_wolfe")

        def closure(stage=stage):
            value, mean.grad, u.grad = _deviance(stage, mean, u, m, chunk_size, gradient=True)
            count = stage.shape[0]
            mean.grad /= count
            u.grad /= count
            curve.append(value.item() / count)       # mean BCE per image
            if verbose and len(curve) % 25 == 0:
                print(f"  L-BFGS evaluation {len(curve)} on {count} images: BCE per image {curve[-1]:.3f} "
                      f"({time.perf_counter() - began:.0f} s)", flush=True)
            return (value / count).float()

        optimizer.step(closure)
    if not math.isfinite(curve[-1]):
        raise UserError("logistic PCA diverged (non-finite loss); try a smaller m")
    return mean, u, curve


BASELINES: dict[str, type[_Baseline]] = {"pca": PCA, "logistic_pca": LogisticPCA}  # by the CLI's names
