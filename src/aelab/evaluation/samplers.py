"""Drawing new inputs from any trained method, by name (`SAMPLERS`):

    prior  decodes draws of the model's own prior (the VAE family, the AAE): `model.sample`
    gmm    fits a Gaussian mixture to the training codes after training ("ex post", as Ghosh et al. 2020 sample
           their RAE and as pythae's GaussianMixtureSampler does), and decodes its draws: any autoencoder samples.

The mixture is fitted to `model.sampling_codes` of the training set (a quantised model's continuous encoder output)
and decoded by `model.decode_sampled` (which quantises first where the model quantises). A run keeps it in
RUN/gmm.safetensors (float64, no pickle), stamped with the epoch of the weights it was fitted to, and later calls
reuse it.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from aelab.errors import UserError
from aelab.storage import files, tensorfile

COMPONENTS = 10  # pythae's GaussianMixtureSampler and Ghosh et al.'s default
FORMAT = "aelab-gmm/1"


class GaussianMixture:
    """A full-covariance Gaussian mixture fitted by EM in float64, started as scikit-learn's GaussianMixture starts
    (k-means++ centres, a few Lloyd steps, then the M-step of the hard assignment). `reg`, added to each covariance's
    diagonal, is relative to the codes' mean variance, so the fit does not depend on their scale."""

    def __init__(self, components: int = COMPONENTS, max_iter: int = 100, tol: float = 1e-3, reg: float = 1e-6,
                 seed: int = 0, chunk: int = 8192):
        self.components, self.max_iter, self.tol, self.reg, self.seed, self.chunk = \
            components, max_iter, tol, reg, seed, chunk

    # -- fitting ------------------------------------------------------------------------------------------------

    def fit(self, x: torch.Tensor) -> "GaussianMixture":
        x = torch.as_tensor(x).double()
        n, d = x.shape
        if not 1 <= self.components <= n:
            raise UserError(f"--components {self.components} is more than the {n} training codes the mixture is "
                            f"fitted to; give --components {n} or fewer")
        self.ridge_ = self.reg * max(x.var(0).mean().item(), 1e-12) if n > 1 else self.reg
        resp = torch.zeros(n, self.components, dtype=torch.float64)
        resp[torch.arange(n), self._kmeans(x)] = 1
        self._m_step(x, resp)
        previous, self.converged_ = -math.inf, False
        for self.iterations_ in range(1, self.max_iter + 1):
            log_joint = self._log_joint(x)                                   # (n, K)
            log_px = torch.logsumexp(log_joint, 1)
            self.log_likelihood_ = log_px.mean().item()                      # nats per code
            self._m_step(x, (log_joint - log_px[:, None]).exp())
            if abs(self.log_likelihood_ - previous) < self.tol:
                self.converged_ = True
                break
            previous = self.log_likelihood_
        return self

    def _kmeans(self, x: torch.Tensor, steps: int = 10) -> torch.Tensor:
        """k-means++ seeding (Arthur & Vassilvitskii 2007) then Lloyd steps: each code's cluster (n,)."""
        g = torch.Generator().manual_seed(self.seed)
        centres = x[torch.randint(len(x), (1,), generator=g)]
        nearest = torch.cdist(x, centres).squeeze(1).pow(2)
        for _ in range(1, self.components):
            weights = nearest if nearest.sum() > 0 else torch.ones_like(nearest)
            pick = torch.multinomial(weights, 1, generator=g)
            centres = torch.cat([centres, x[pick]])
            nearest = torch.minimum(nearest, torch.cdist(x, x[pick]).squeeze(1).pow(2))
        for _ in range(steps):
            label = torch.cdist(x, centres).argmin(1)
            counts = torch.bincount(label, minlength=self.components).double()
            sums = torch.zeros_like(centres).index_add_(0, label, x)
            centres = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centres)
        return torch.cdist(x, centres).argmin(1)

    def _m_step(self, x: torch.Tensor, resp: torch.Tensor) -> None:
        counts = resp.sum(0) + 10 * torch.finfo(torch.float64).eps          # (K,): no empty component divides by 0
        self.weights_ = counts / counts.sum()
        self.means_ = (resp.T @ x) / counts[:, None]                          # (K, d)
        eye = torch.eye(x.shape[1], dtype=torch.float64)
        covariances = []
        for k in range(self.components):
            cov = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64)
            for s in range(0, len(x), self.chunk):
                diff = x[s:s + self.chunk] - self.means_[k]
                cov += (resp[s:s + self.chunk, k:k + 1] * diff).T @ diff
            covariances.append(cov / counts[k] + self.ridge_ * eye)
        self.covariances_ = torch.stack(covariances)                          # (K, d, d)
        self._factor()

    def _factor(self) -> None:
        self.cholesky_ = torch.linalg.cholesky(self.covariances_)             # (K, d, d), lower

    def _log_joint(self, x: torch.Tensor) -> torch.Tensor:
        """log w_k + log N(x | mean_k, cov_k) for each code and component: (n, K)."""
        d = x.shape[1]
        log_det = 2 * self.cholesky_.diagonal(dim1=1, dim2=2).log().sum(1)    # (K,)
        out = torch.empty(len(x), self.components, dtype=torch.float64)
        for k in range(self.components):
            for s in range(0, len(x), self.chunk):
                diff = (x[s:s + self.chunk] - self.means_[k]).T                 # (d, c)
                maha = torch.linalg.solve_triangular(self.cholesky_[k], diff, upper=False).pow(2).sum(0)
                out[s:s + self.chunk, k] = -0.5 * (maha + log_det[k] + d * math.log(2 * math.pi))
        return out + self.weights_.log()

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) of each code (n,), in nats."""
        return torch.logsumexp(self._log_joint(torch.as_tensor(x).double()), 1)

    # -- drawing and keeping -----------------------------------------------------------------------------------

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n codes (n, d) in float64: a component by its weight, then mean + L eps."""
        which = torch.multinomial(self.weights_, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.means_.shape[1], 1, dtype=torch.float64, generator=generator)
        return self.means_[which] + (self.cholesky_[which] @ eps).squeeze(2)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"weights": self.weights_, "means": self.means_, "covariances": self.covariances_}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> "GaussianMixture":
        mixture = cls(len(tensors["weights"]))
        mixture.weights_, mixture.means_, mixture.covariances_ = \
            tensors["weights"], tensors["means"], tensors["covariances"]
        mixture._factor()
        return mixture


# ---------------------------------------------------------------------------------------------- the samplers

class Sampler:
    """A way to draw new inputs from a trained method. `cannot(model)` says in words why it cannot, before anything
    is read or written; `draw(n, generator)` gives n outputs as the model outputs them (images in [0, 1])."""

    name = ""

    def __init__(self, model):
        self.model = model

    @staticmethod
    def cannot(model) -> str | None:
        return None

    def draw(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def describe(self) -> str:
        return self.name


class PriorSampler(Sampler):
    """Decodes draws of the model's own prior."""

    name = "prior"

    @staticmethod
    def cannot(model) -> str | None:
        if not model.generative:
            return "has no prior to draw from; use --sampler gmm (a Gaussian mixture fitted to its training codes)"
        return None

    def draw(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.model.sample(n, generator)

    def describe(self) -> str:
        return f"prior: draws of the model's {self.model.prior_name} prior, decoded"


class MixtureSampler(Sampler):
    """Decodes draws of a Gaussian mixture fitted to the training codes."""

    name = "gmm"

    def __init__(self, model, mixture: GaussianMixture, note: str = ""):
        super().__init__(model)
        self.mixture, self.note = mixture, note

    def draw(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        z = self.mixture.sample(n, generator).float().to(self.model.device)
        return torch.as_tensor(self.model.decode_sampled(z))

    def describe(self) -> str:
        """What was fitted to what, and how a draw becomes an output (a quantised model's own way, when it has one)."""
        codes, draw = self.model.sampling_words()
        how = f"; a draw: {draw}" if draw else ", decoded"
        return f"gmm: a {self.mixture.components}-component full-covariance Gaussian mixture fitted to {codes}{how}" \
               f"{self.note}"


SAMPLERS: dict[str, type[Sampler]] = {cls.name: cls for cls in (PriorSampler, MixtureSampler)}


def default_sampler(model) -> str:
    """prior where the model has one, else gmm."""
    return "prior" if PriorSampler.cannot(model) is None else "gmm"


def check_sampler(name: str, model, components: int | None = None, what: str = "this model") -> None:
    """One line, before anything is read or written, if `name` is no sampler or one the model cannot use."""
    if name not in SAMPLERS:
        raise UserError(f"unknown sampler {name!r}; use --sampler {' or --sampler '.join(SAMPLERS)}")
    reason = SAMPLERS[name].cannot(model)
    if reason:
        raise UserError(f"{what} {reason}")
    if components is not None and name != "gmm":
        raise UserError("--components sets the mixture of --sampler gmm; drop it, or give --sampler gmm")


@torch.no_grad()
def training_codes(model, train, batch_size: int = 5000) -> torch.Tensor:
    """`model.sampling_codes` of every training input, (n, d) float64 on the CPU."""
    model.eval()
    return torch.cat([model.sampling_codes(x).double().cpu() for x in train.batches(batch_size)])


def kept_mixture(path: Path, components: int, epoch: int | None) -> GaussianMixture | None:
    """The mixture kept at `path` if it has `components` and was fitted to the weights of `epoch`; None otherwise (a
    damaged file is refused in one line)."""
    if not path.is_file():
        return None
    fix = f"delete {path}, and the mixture is fitted again"
    meta = tensorfile.metadata(path, fix=fix)
    if meta.get("components") != str(components) or meta.get("weights_epoch") != str(epoch):
        return None
    tensors, _ = tensorfile.load(path, {"weights": torch.zeros(components, dtype=torch.float64), "means": None,
                                        "covariances": None}, fix=fix)
    means, cov = tensors["means"], tensors["covariances"]
    if means.ndim != 2 or len(means) != components or cov.shape != (components, means.shape[1], means.shape[1]) \
            or {means.dtype, cov.dtype} != {torch.float64}:
        raise UserError(f"{path} does not hold a mixture of {components} components; it is damaged: {fix}")
    try:
        return GaussianMixture.from_tensors(tensors)
    except RuntimeError:  # torch.linalg.LinAlgError: covariances that are not positive definite
        raise UserError(f"{path} holds covariances that are not positive definite; it is damaged: {fix}") from None


def make_sampler(name: str, model, train, components: int | None = None, kept: Path | None = None,
                 epoch: int | None = None, keep: bool = False, what: str = "this model") -> Sampler:
    """The sampler `name` for a trained model. gmm reuses the mixture kept at `kept` (a run folder's
    gmm.safetensors) when it was fitted to the weights of `epoch` with these components; otherwise it fits one to
    the codes of `train` (a data set, or a function that loads it: called only then) and, with `keep`, keeps it
    there."""
    check_sampler(name, model, components, what)
    if name == "prior":
        return PriorSampler(model)
    components = components or COMPONENTS
    mixture = kept_mixture(kept, components, epoch) if kept is not None else None
    if mixture is not None:
        return MixtureSampler(model, mixture, f" (the mixture kept in {kept})")
    train = train() if callable(train) else train
    mixture = GaussianMixture(components).fit(training_codes(model, train))
    note = f" ({len(train)} training codes)"
    if keep and kept is not None:
        files.refuse_link(kept)
        tensorfile.write(kept, mixture.tensors(),
                         {"format": FORMAT, "components": str(components), "weights_epoch": str(epoch),
                          "codes": str(len(train)), "log_likelihood": f"{mixture.log_likelihood_:.6f}",
                          "iterations": str(mixture.iterations_), "converged": str(mixture.converged_)})
        note = f" ({len(train)} training codes; kept in {kept})"
    return MixtureSampler(model, mixture, note)
