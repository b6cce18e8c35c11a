"""The chapter's deep autoencoder, and the base every variant overrides one hook of.

Encoder 784-256-128-64-20 with ReLU and a linear code, decoder 20-64-128-256-784 with ReLU and logits out:
487 588 parameters, initialised as Keras initialises Dense layers (Glorot-uniform weights, zero biases).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from aelab.devices import batch_draw
from aelab.errors import UserError
from aelab.models.contract import Defaults, same_kind
from aelab.models.losses import bce_mean, bce_per_image, entropy_per_image, mse_mean, squared_error_per_image


@dataclass
class AEConfig:
    latent: int = 20                          # size of the code z
    hidden: tuple[int, ...] = (256, 128, 64)  # MLP widths from the image towards the code
    arch: str = "mlp"                         # "mlp" (the chapter's) or "conv"
    channels: tuple[int, ...] = (32, 64)      # conv: channels of the stride-2 layers
    in_shape: tuple[int, ...] = (1, 28, 28)   # (c, h, w) images or (d,) vectors, taken from the data
    recon_loss: str = "bce"                   # taken from the data: "bce" for pixels in [0, 1], "mse" for vectors

    def check(self) -> None:
        """Refuse values that cannot work, where settings enter (aelab.runs.settings.resolve, a run's config.json)
        and again when a model is built. Variants extend this; what depends on the data's size is checked at build."""
        if self.arch not in ("mlp", "conv"):
            raise UserError(f"unknown arch {self.arch!r}; use --arch mlp or --arch conv")
        if self.latent < 1 or any(w < 1 for w in self.hidden + self.channels):
            raise UserError("latent and hidden sizes must be positive integers")
        if self.arch == "conv" and not self.channels:
            raise UserError("--arch conv needs at least one channel width, e.g. --set model.channels=32,64")
        if self.recon_loss not in ("bce", "mse"):
            raise UserError(f"unknown recon_loss {self.recon_loss!r}: the data sets it (bce for images, mse for vectors)")
        vector = self.recon_loss == "mse" and len(self.in_shape) == 1
        if not vector and (len(self.in_shape) != 3 or self.in_shape[0] not in (1, 3)) or min(self.in_shape) < 1:
            raise UserError(f"in_shape must be (channels, height, width) with 1 or 3 channels, or (d,) for vectors, "
                            f"not {self.in_shape}; it is taken from the data: drop the setting")
        if self.arch == "conv" and len(self.in_shape) != 3:
            raise UserError(f"--arch conv needs images (channels, height, width), not inputs of shape {self.in_shape}; "
                            "train vectors with --arch mlp")


class Dropout(nn.Dropout):
    """nn.Dropout with its mask drawn for the whole global batch (batch_draw), so N ranks drop what one process
    would. On the CPU the mask is the one F.dropout draws (bernoulli_(1 - p), then / (1 - p)), to the bit."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not self.p:
            return x
        keep = batch_draw(len(x), lambda m: torch.empty((m, *x.shape[1:]), dtype=x.dtype, device=x.device)
                          .bernoulli_(1 - self.p))
        return x * keep.div_(1 - self.p)


def mlp(sizes: list[int], dropout: float = 0.0) -> list[nn.Module]:
    """Linear layers with ReLU between them (none after the last), dropout after each ReLU if asked."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
            if dropout:
                layers.append(Dropout(dropout))
    return layers


def build_encoder(config: AEConfig, out_features: int, dropout: float = 0.0) -> nn.Sequential:
    if config.arch == "mlp":
        return nn.Sequential(nn.Flatten(), *mlp([math.prod(config.in_shape), *config.hidden, out_features], dropout))
    c, h, w = config.in_shape
    layers: list[nn.Module] = []
    for c_in, c_out in zip((c, *config.channels), config.channels):
        layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.ReLU()]
        if dropout:
            layers.append(Dropout(dropout))
    scale = 2 ** len(config.channels)
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(config.channels[-1] * (h // scale) * (w // scale),
                                                          out_features))


def build_decoder(config: AEConfig, dropout: float = 0.0) -> nn.Sequential:
    if config.arch == "mlp":
        return nn.Sequential(*mlp([config.latent, *reversed(config.hidden), math.prod(config.in_shape)], dropout),
                             nn.Unflatten(1, config.in_shape))
    c, h, w = config.in_shape
    scale = 2 ** len(config.channels)
    top = config.channels[-1]
    layers: list[nn.Module] = [nn.Linear(config.latent, top * (h // scale) * (w // scale)), nn.ReLU(),
                               nn.Unflatten(1, (top, h // scale, w // scale))]
    outs = (*reversed(config.channels[:-1]), c)
    for i, (c_in, c_out) in enumerate(zip(reversed(config.channels), outs)):
        layers.append(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1))
        if i < len(outs) - 1:
            layers.append(nn.ReLU())
            if dropout:
                layers.append(Dropout(dropout))
    return nn.Sequential(*layers)


def adam(params, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-7) -> torch.optim.Adam:
    """Adam as the chapter's Keras code ran it: epsilon 1e-7, not torch's 1e-8. Measured over 3 seeds, 10 epochs:
    test BCE 0.2913 vs 0.2922 and MSE 0.0161 vs 0.0165. fused: one kernel for every parameter (~10% of an epoch)."""
    return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, fused=True)


class ClippedAdam(torch.optim.Adam):
    """aelab's Adam (`adam`) that first clips the gradients' global norm at `max_norm`."""

    def __init__(self, params, lr: float, max_norm: float, eps: float):
        made = adam(params, lr, eps=eps)
        super().__init__(made.param_groups, **made.defaults)
        self.max_norm = max_norm

    @torch.no_grad()
    def step(self, closure=None):
        torch.nn.utils.clip_grad_norm_([p for group in self.param_groups for p in group["params"]], self.max_norm)
        return _ADAM_STEP(self, closure)


_ADAM_STEP = inspect.unwrap(torch.optim.Adam.step)  # without its wrappers, as train.eager_optimizers steps


def keras_init_(module: nn.Module) -> None:
    """Glorot-uniform weights and zero biases, as Keras' Dense and Conv2D layers start."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)


MAX_WEIGHTS = 1 << 28  # 268 million weights (1 GiB in fp32, 3 with Adam's moments): beyond that a setting is a slip


def check_config(config: AEConfig, archs: tuple[str, ...] = ("mlp", "conv"), name: str = "this model") -> None:
    """config.check(), the model's own architectures, and what depends on the data's size: before any layer is
    allocated."""
    config.check()
    if config.arch not in archs:
        raise UserError(f"{name} has no arch {config.arch!r}; use " + " or ".join(f"--arch {a}" for a in archs))
    if config.arch == "mlp":
        sizes = [math.prod(config.in_shape), *config.hidden, config.latent]
        weights = sum(a * b for a, b in zip(sizes, sizes[1:]))
    else:
        c, h, w = config.in_shape
        scale = 2 ** len(config.channels)
        if h % scale or w % scale:
            raise UserError(f"--arch conv halves the image {len(config.channels)} times, so height and width must "
                            f"divide by {scale}, not {h}x{w}; use --arch mlp")
        widths = [c, *config.channels]
        weights = sum(16 * a * b for a, b in zip(widths, widths[1:])) + widths[-1] * h * w // scale ** 2 * config.latent
    if 2 * weights > MAX_WEIGHTS:  # encoder and decoder mirror each other
        raise UserError(f"these sizes make a model of about {2 * weights:,} weights for inputs of shape "
                        f"{'x'.join(map(str, config.in_shape))}, over the {MAX_WEIGHTS:,} aelab builds; use smaller "
                        "--hidden, --latent or channels")


class Autoencoder(nn.Module, Defaults):
    """Deep autoencoder of the chapter: MLP encoder to a linear code, decoder to per-pixel logits."""
    # It keeps aelab.models.contract.Model; variants override its hooks and declare what they are (docs/extending.md).

    Config = AEConfig
    code_heads = 1  # how many latent-sized vectors the encoder outputs (a VAE's mean and log-variance: 2)
    archs = ("mlp", "conv")  # the architectures this model can be built on
    inputs = ("images", "vectors")  # the data it takes; a variant whose meaning needs pixels takes ("images",)
    generative = False  # True: it has sample(n, generator)
    denoising = False   # True: trained to restore corrupted inputs
    pictures: dict[str, str] = {}  # what make_pictures draws: file name -> caption
    # the measures the console's epoch line shows first (metrics.jsonl's keys), each with its label there
    epoch_line = {"train_loss": "train", "test_loss": "test"}
    prior_name: str | None = None  # the prior sample() draws codes from
    loss_is_reconstruction = True  # its eval loss is its clean reconstruction's error: one pass evaluates both
    anomaly_kinds = ("recon", "mahalanobis")  # the anomaly scores it offers (anomaly_scores), its default first
    plain_sampling = True  # its sampling_codes and decode_sampled are encode and decode (contract.Defaults)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # a variant that changes the loss or the encoder's input needs its own pass to evaluate its loss
        cls.loss_is_reconstruction = cls.loss is Autoencoder.loss and cls.corrupt is Autoencoder.corrupt

    def __init__(self, config: AEConfig, dropout: float = 0.0):
        super().__init__()
        check_config(config, self.archs, type(self).__name__)
        self.config = config
        if self.data_kind not in self.inputs:
            raise UserError(f"{type(self).__name__} takes {' and '.join(self.inputs)} only, not "
                            f"{self.data_kind}; train those with a model that takes them, e.g. ae or sae")
        self.encoder = build_encoder(config, config.latent * self.code_heads, dropout)
        self.decoder = build_decoder(config, dropout)
        keras_init_(self)
        if self.data_kind == "vectors":
            # vectors train standardised (data.VectorSet); the training split's per-feature mean and std live in
            # the weights, so that encode, decode and reconstruct take and give vectors in their own units
            self.register_buffer("in_mean", torch.zeros(config.in_shape))
            self.register_buffer("in_std", torch.ones(config.in_shape))

    @torch.no_grad()
    def keep_standardisation(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """A model of vectors keeps the per-feature mean and std (d,) of its training split, which its vectors are
        standardised by, in its weights."""
        self.in_mean.copy_(mean.reshape(self.in_mean.shape))
        self.in_std.copy_(std.reshape(self.in_std.shape))

    # -- the hooks variants override --------------------------------------------------------------------------

    def corrupt(self, x: torch.Tensor) -> torch.Tensor:
        """What the encoder sees while training; the clean x stays the target."""
        return x

    def code(self, x: torch.Tensor) -> torch.Tensor:
        """The code z used to reconstruct x (deterministic here; sampled in a VAE while training)."""
        return self.encoder(x)

    def loss(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named loss terms for a batch of clean inputs x; "loss" is what the optimiser minimises."""
        return {"loss": self.recon_error(self.decoder(self.code(self.corrupt(x))), x)}

    def initialise(self, sample: torch.Tensor, steps: int, size: int = 0) -> None:
        """Data-dependent initialisation, called once before a new run's first step (never on resume) with a
        sample of training inputs as the model trains on them, the number of steps the run will take and the number
        of training inputs (0 where unknown)."""

    def measures(self, test) -> dict:
        """Measures of this variant beyond reconstruction, for `aelab eval` (test: a set on the model's device)."""
        return {}

    def make_pictures(self, test) -> dict[str, np.ndarray]:
        """The pictures declared in `pictures`, drawn after training: file name -> uint8 image array."""
        return {}

    # -- the reconstruction error follows the data ------------------------------------------------------------

    @property
    def data_kind(self) -> str:
        """"images" (pixels in [0, 1]) or "vectors" (standardised real values), as the data set the config."""
        return "images" if self.config.recon_loss == "bce" else "vectors"

    @property
    def in_shape(self) -> tuple[int, ...]:
        return tuple(self.config.in_shape)

    def recon_error(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The mean reconstruction loss of decoder output `out` for targets x: the chapter's per-pixel
        cross-entropy with logits for images, the mean squared error for (standardised) vectors."""
        return bce_mean(out, x) if self.data_kind == "images" else mse_mean(out, x)

    def recon_error_per_input(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction loss summed over each input, (b,): the Bernoulli negative log-likelihood in nats
        for images; the squared error for vectors (a Gaussian's of variance 1/2, less a constant)."""
        return bce_per_image(out, x) if self.data_kind == "images" else squared_error_per_image(out, x)

    def output(self, out: torch.Tensor) -> torch.Tensor:
        """What the decoder's output stands for: probabilities for images, standardised vectors for vectors."""
        return torch.sigmoid(out) if self.data_kind == "images" else out.float()

    @torch.no_grad()
    def evaluation(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor | None]:
        """Eval-mode loss terms of a clean batch, its clean reconstruction as output() gives it, and the logits
        (None for vectors): one decoder pass where the loss is that reconstruction's error."""
        out = self.decoder(self.code_eval(x))
        terms = {"loss": self.recon_error(out, x)} if self.loss_is_reconstruction else self.loss(x)
        return terms, self.output(out), (out if self.data_kind == "images" else None)

    def configure_optimizers(self, lr: float) -> list[torch.optim.Optimizer]:
        return [adam(self.parameters(), lr)]

    # -- anomaly scores: higher is stranger ---------------------------------------------------------------------

    @torch.no_grad()
    def anomaly_reference(self, batches) -> dict[str, torch.Tensor]:
        """What the scores need from the training inputs (clean float batches), fitted once: the mean and the
        precision of their codes, for the Mahalanobis distance. The covariance is shrunk towards its mean variance
        by 1e-3 so that a code with dead or collinear dimensions still has a precision."""
        total, outer, n = 0.0, 0.0, 0
        for x in batches:
            z = self.code_eval(x).flatten(1).double()
            total, outer, n = total + z.sum(0), outer + z.T @ z, n + len(z)
        mean = total / n
        cov = outer / n - torch.outer(mean, mean)
        cov += 1e-3 * cov.diagonal().mean().clamp_min(1e-12) * torch.eye(len(mean), dtype=cov.dtype, device=cov.device)
        return {"code_mean": mean.float(), "code_precision": torch.linalg.inv(cov).float()}

    @torch.no_grad()
    def anomaly_scores(self, x: torch.Tensor, kind: str, reference: dict[str, torch.Tensor] | None = None
                       ) -> torch.Tensor:
        """One score per input of a clean float batch, (b,), higher for inputs less like the training data.
        "recon": the reconstruction error summed over the input (for pixels the cross-entropy in nats above the
        input's own entropy, see recon_floor; for vectors the squared error); "mahalanobis": the squared
        Mahalanobis distance of the code from the training codes (`reference`, from anomaly_reference)."""
        if kind == "recon":
            return self.recon_error_per_input(self.decoder(self.code_eval(x)), x) - self.recon_floor(x)
        if kind == "mahalanobis":
            d = self.code_eval(x).flatten(1).float() - reference["code_mean"]
            return ((d @ reference["code_precision"]) * d).sum(1)
        raise UserError(f"{type(self).__name__} has no anomaly score {kind!r}; use one of "
                        f"{', '.join(self.anomaly_kinds)}")

    def recon_floor(self, x: torch.Tensor) -> torch.Tensor:
        """The least reconstruction error any model can reach on each input, (b,): for grey pixels their binary
        entropy (BCE = H(x) + KL), 0 for vectors. Scores subtract it: an image of many grey pixels is not strange
        for that, and the raw cross-entropy ranks by it (one-class AUROC on Fashion-MNIST's T-shirts: 0.64 raw,
        0.90 above the floor, as Serra et al. 2020 correct likelihoods by the input's complexity)."""
        if self.data_kind == "images":  # clamped: floats outside [0, 1] still train, and score finite
            return entropy_per_image(x.clamp(0, 1)).to(x.dtype)
        return torch.zeros(len(x), device=x.device)

    @torch.no_grad()
    def anomaly_details(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For pictures of what the model finds strange: the reconstruction of a clean float batch as output()
        gives it, and the per-pixel (per-value) reconstruction error, both shaped like x."""
        out = self.decoder(self.code_eval(x))
        return self.output(out), (self.output(out) - x).abs()

    def training_steps(self, x: torch.Tensor):
        """What to minimise on batch x, step by step: yields (optimiser index, loss); the trainer takes that
        optimisation step and resumes this generator, which returns the batch's loss terms."""
        terms = self.loss(x)
        yield 0, terms["loss"]
        return terms

    # -- public use: tensors or numpy arrays in, the same kind out -----------------------------------------------

    @property
    def code_shape(self) -> tuple[int, ...]:
        """The shape of one image's code as the decoder takes it: (latent,), or a VQ-VAE's grid."""
        return (self.config.latent,)

    def decoder_layers(self) -> nn.Sequential:
        return self.decoder

    @property
    def code_size(self) -> int:
        """How many numbers `encode` gives per image: the code flattened."""
        return int(np.prod(self.code_shape))

    @torch.no_grad()
    def encode(self, x):
        """Codes, flat rows (n, code_size), of images (n, h, w), (n, c, h, w) or flat rows, uint8 in 0-255 or
        float in [0, 1]; a model trained on vectors takes vectors (n, d) in their own units."""
        return same_kind(x, self.code_eval(self._images(x)).flatten(1))

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @torch.no_grad()
    def decode(self, z):
        """Images (probabilities in [0, 1]), or vectors in their own units, from codes (n, code_size), as
        `encode` gives them."""
        z_t = torch.as_tensor(np.asarray(z) if not isinstance(z, torch.Tensor) else z, dtype=torch.float32,
                              device=self.device)
        if z_t.ndim != 2 or z_t.shape[1] != self.code_size:
            raise UserError(f"codes must have shape (n, {self.code_size}), not {tuple(z_t.shape)}")
        return same_kind(z, self._outputs(self.decoder(z_t.view(-1, *self.code_shape))))

    @torch.no_grad()
    def reconstruct(self, x):
        """Reconstructions (probabilities in [0, 1]) of clean images."""
        return same_kind(x, self._outputs(self.decoder(self.code_eval(self._images(x)))))

    def sampling_codes(self, x) -> torch.Tensor:
        """The codes `encode` gives, (n, code_size) float: what an ex-post sampler fits its density to."""
        return torch.as_tensor(self.encode(x)).float()

    def decode_sampled(self, z: torch.Tensor) -> torch.Tensor:
        """`decode` of codes drawn in the space of `sampling_codes`."""
        return self.decode(z)

    @torch.no_grad()
    def interpolate(self, a, b, steps: int = 10) -> torch.Tensor:
        """Images decoded from `steps` codes evenly spaced on the line from the code of image a to that of b."""
        if steps < 2:
            raise UserError(f"interpolation needs at least 2 steps, not {steps}")
        za, zb = self.code_eval(self._images(a)[:1]), self.code_eval(self._images(b)[:1])
        t = torch.linspace(0, 1, steps, device=self.device).unsqueeze(1)
        return self._outputs(self.decoder((1 - t) * za + t * zb))

    def prepare(self, x) -> torch.Tensor:
        """Inputs as a user holds them (what `encode` takes) as the clean float batch the model computes on."""
        return self._images(x)

    def code_eval(self, x: torch.Tensor) -> torch.Tensor:
        """The deterministic code of a clean image: a VAE's posterior mean."""
        return self.encoder(x)[:, :self.config.latent]

    def _images(self, x) -> torch.Tensor:
        t = (torch.as_tensor(np.asarray(x)) if not isinstance(x, torch.Tensor) else x).to(self.device)
        t = t.float().div(255) if t.dtype == torch.uint8 else t.float()
        shape = self.config.in_shape
        if t.ndim == 2 and t.shape[1] == int(np.prod(shape)):
            t = t.reshape(-1, *shape)
        elif t.ndim == 3 and shape[0] == 1:
            t = t.unsqueeze(1)
        if tuple(t.shape[1:]) != tuple(shape):
            raise UserError(f"{'images' if len(shape) == 3 else 'vectors'} of shape {tuple(t.shape[1:])} do not fit "
                            f"this model, which takes {'x'.join(map(str, shape))}"
                            + (" (channels x height x width)" if len(shape) == 3 else " values each"))
        return (t - self.in_mean) / self.in_std if self.data_kind == "vectors" else t

    def _outputs(self, out: torch.Tensor) -> torch.Tensor:
        """Decoder output as the user's data: probabilities, or vectors in their own units."""
        values = self.output(out)
        return values * self.in_std + self.in_mean if self.data_kind == "vectors" else values

    def num_parameters(self) -> int:
        """How many learned numbers the model holds."""
        return sum(p.numel() for p in self.parameters())


def summary(model: nn.Module) -> str:
    """A layer table like Keras' model.summary()."""
    lines = [f"{'layer':<34}{'output shape':<22}{'params':>10}", "=" * 66]
    shape = (1, *model.config.in_shape)
    for part in ("encoder", "decoder"):
        if part == "decoder":
            shape = (1, *model.code_shape)
        x = torch.zeros(shape, device=next(model.parameters()).device)
        for i, layer in enumerate(getattr(model, part)):
            x = layer(x)
            params = sum(p.numel() for p in layer.parameters())
            lines.append(f"{f'{part}.{i} ({layer.__class__.__name__})':<34}{str(tuple(x.shape[1:])):<22}{params:>10,}")
    for name, child in model.named_children():
        if name not in ("encoder", "decoder"):
            lines.append(f"{name + ' (' + child.__class__.__name__ + ')':<34}{'':<22}"
                         f"{sum(p.numel() for p in child.parameters()):>10,}")
    lines += ["=" * 66, f"Total params: {model.num_parameters():,}"]
    return "\n".join(lines)
