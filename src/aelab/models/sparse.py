"""Sparse autoencoders as interpretability work trains them on a network's activations: a linear dictionary
decoder x^ = W_dec z + b_dec and a sparse non-negative code z = act(W_enc (x - b_dec) + b_enc), the decoder bias
subtracted first (Bricken et al. 2023; on images the decoder speaks logits, so there b_dec is just a learned shift).

The sparsity (TopK, BatchTopK, JumpReLU or L1, each as its paper trains it) is a small object from the table in
models/sparsities.py, which the model holds and asks what differs between them.
Every form's atoms are free and start short (`atom_norm`, Anthropic's April 2024 update; SAELens), and every form clips
the gradient's norm and takes Adam's epsilon as SAELens does. TopK so recovers far more known features than over
OpenAI's unit-norm atoms with projected gradients, and BatchTopK leaves far fewer units dead (docs/sae.md).
`initialise` puts b_dec at the geometric median (or mean) of a sample of the training data, l1's at zero; the encoder
starts as the decoder's transpose (Gao et al. 2024).
Reported, as that field does: L0, FVU, shrinkage (||x^|| / ||x||), cosine(x^, x), the dead units (not active over
the last `dead_window` training inputs, counted in a buffer so checkpoints and resume keep the count) and the
density of each unit's firing."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from aelab import devices
from aelab.errors import UserError
from aelab.models.base import AEConfig, Autoencoder, ClippedAdam, adam
from aelab.models.sparsities import SPARSITIES, gathered
from aelab.pictures.images import tile

CENTRES = ("auto", "median", "mean", "zero")


@dataclass
class SAEConfig(AEConfig):
    latent: int = 256                # dictionary size: units in the code
    hidden: tuple[int, ...] = ()     # encoder widths before the code (none: the usual one-layer SAE); the
    #                                  decoder is always one linear map, the dictionary
    sparsity: str = "topk"           # a name in models.sparsities.SPARSITIES
    k: int = 32                      # topk, batchtopk: units kept per input (on average over the batch for batchtopk)
    k_aux: int = 0                   # topk, batchtopk: dead units AuxK uses per input (0: the sparsity's own: topk
    #                                  half the input's size, as Gao et al.; batchtopk k / 2); never more than are dead;
    #                                  jumprelu: units silent on the input (0: 3)
    aux_coefficient: float = -1.0    # topk, batchtopk: weight of the AuxK loss (0: none; < 0: the sparsity's own:
    #                                  topk 1/32, batchtopk 0.1)
    l1: float = 5.0                  # l1: weight of the penalty (batch mean of sum_i z_i ||W_dec[:, i]||) against the
    #                                  summed squared error: Anthropic's lambda (5), divided by d beside the mean MSE
    atom_norm: float = 0.1           # every atom's norm at the start (the encoder starts as their transpose)
    l1_warmup: float = 0.05          # l1: the weight grows linearly from 0 over this fraction of the run's steps
    grad_clip: float = 1.0           # each step's gradient norm clipped at this for the summed squared error
    #                                  (grad_clip / d beside the mean); 0: none
    l0_coefficient: float = 2.0      # jumprelu: weight of the L0 penalty (batch mean of units active) against the
    #                                  summed squared error (divided by d beside the mean MSE, as l1)
    bandwidth: float = 0.05          # jumprelu: width of the rectangle kernel of the threshold's gradient (SAELens's)
    threshold: float = 0.01          # jumprelu: every unit's threshold at the start (SAELens's): small beside the
    #                                  first codes, the atoms being short; trained as itself it moves about lr a
    #                                  step, to O(1) at SAE scale (mean squared norm d) in a few thousand steps: a
    #                                  shorter run stays far from sparse
    centre: str = "auto"             # b_dec at the start: geometric "median" or "mean" of a training sample,
    #                                  "zero", or "auto": the sparsity's own (zero for l1, else the median)
    dead_window: int = 0             # a unit not active over this many training inputs counts as dead (0: the
    #                                  sparsity's own: 100 000; batchtopk 10 000)
    jumprelu_aux: float = 0.1        # jumprelu: weight of its AuxK, where the k_aux largest pre-activations of the
    #                                  units silent on an input fit the live code's error (0: none, as runs saved
    #                                  before it trained)

    # what a saved config.json without these settings trained with (aelab.runs.settings.from_dict)
    saved_without = {"jumprelu_aux": 0.0}  # not annotated: no setting

    def check(self) -> None:
        super().check()
        if self.sparsity not in SPARSITIES:
            raise UserError(f"unknown sparsity {self.sparsity!r}; use --set sparsity= one of {', '.join(SPARSITIES)}")
        if self.centre not in CENTRES:
            raise UserError(f"unknown centre {self.centre!r}; use --set centre= one of {', '.join(CENTRES)}")
        if self.k < 1 or self.k_aux < 0 or self.dead_window < 0:
            raise UserError("k must be at least 1, and k_aux and dead_window at least 0 (0: the sparsity's own)")
        if self.sparsity in ("topk", "batchtopk") and self.k > self.latent:
            raise UserError(f"k (units kept per input) is {self.k}, more than the dictionary's {self.latent} units "
                            f"(latent); give k at most {self.latent}, e.g. --set k={max(1, self.latent // 8)}")
        if min(self.l1, self.l0_coefficient, self.grad_clip) < 0:
            raise UserError("l1, l0_coefficient and grad_clip must not be negative")
        if self.jumprelu_aux < 0:
            raise UserError(f"jumprelu_aux is AuxK's weight, at least 0 (0: none), not {self.jumprelu_aux}")
        if not 0 <= self.l1_warmup <= 1:
            raise UserError(f"l1_warmup is a fraction of the run's steps, in [0, 1], not {self.l1_warmup}")
        if min(self.bandwidth, self.threshold, self.atom_norm) <= 0:
            raise UserError("bandwidth, threshold and atom_norm must be positive, e.g. --set bandwidth=0.05")


def geometric_median(x: torch.Tensor, iterations: int = 20) -> torch.Tensor:
    """The point of least summed distance to the rows of x (n, d), by Weiszfeld's iterations from the mean."""
    x = x.double()
    m = x.mean(0)
    for _ in range(iterations):
        w = 1 / (x - m).norm(dim=1).clamp_min(1e-8)
        m = (w[:, None] * x).sum(0) / w.sum()
    return m.float()


class SparseAutoencoder(Autoencoder):
    """Sparse AE (TopK, BatchTopK, JumpReLU or L1) over a linear dictionary; L0, FVU, shrinkage and dead units."""

    Config = SAEConfig
    pictures = {"atoms.png": "The first 100 atoms of the dictionary, each scaled to its own range",
                "density.png": "Feature density: log10 of how often each unit fires on the test set"}
    epoch_line = {"test_loss": "test", "test_fvu": "fvu", "test_l0": "l0", "test_dead_fraction": "dead"}

    def __init__(self, config: SAEConfig):
        super().__init__(config)
        size = math.prod(config.in_shape)
        self.decoder = nn.Sequential(nn.Linear(config.latent, size), nn.Unflatten(1, config.in_shape))
        with torch.no_grad():  # random unit atoms; a one-layer encoder starts as their transpose (Gao et al. 2024)
            atoms = self.decoder[0].weight                                 # (size, latent): one atom per column
            atoms.normal_()
            atoms.div_(atoms.norm(dim=0, keepdim=True))
            self.decoder[0].bias.zero_()
            atoms.mul_(config.atom_norm)  # short, so the first codes do not overshoot (Anthropic, 2024)
            if self.one_layer():
                self.encoder[-1].weight.copy_(atoms.T)
        self.sparsity = SPARSITIES[config.sparsity]()
        # what inference needs beyond the weights (jumprelu's learned thresholds; batchtopk's running estimate, a
        # buffer): saved with the weights and checkpoints either way
        threshold = self.sparsity.threshold(config)
        if isinstance(threshold, nn.Parameter):
            self.threshold = threshold
        else:
            self.register_buffer("threshold", threshold)
        # buffers: saved with the weights and checkpoints, so resume and inference keep them
        self.register_buffer("inputs_since_active", torch.zeros(config.latent, dtype=torch.int64))
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.int64))
        self.register_buffer("l1_warmup_steps", torch.zeros((), dtype=torch.int64))

    def configure_optimizers(self, lr: float) -> list[torch.optim.Optimizer]:
        """As SAELens trains: the gradient's norm clipped, and Adam's epsilon torch's 1e-8 of the summed squared error
        (1e-8 / d beside aelab's mean; the chapter's 1e-7 would stand at 1e-7 * d there, damping the small gradients of
        rarely firing units)."""
        size = math.prod(self.config.in_shape)
        if self.config.grad_clip:
            return [ClippedAdam(self.parameters(), lr, self.config.grad_clip / size, eps=1e-8 / size)]
        return [adam(self.parameters(), lr, eps=1e-8 / size)]

    def _load_from_state_dict(self, state_dict, prefix, *args) -> None:
        self.sparsity.upgrade(state_dict, prefix)  # an older layout of the sparsity's state, made current
        super()._load_from_state_dict(state_dict, prefix, *args)

    def older_layout(self, like: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor] | None:
        """The tensors a saved state of the older layout holds, given this model's (`like`, named after `prefix`),
        or None where the sparsity has none (JumpReLU's: log_threshold). load_state_dict reads either."""
        return self.sparsity.older_layout(like, prefix)

    @property
    def b_dec(self) -> torch.Tensor:
        return self.decoder[0].bias.view(self.config.in_shape)

    @torch.no_grad()
    def initialise(self, sample: torch.Tensor, steps: int, size: int = 0) -> None:
        """b_dec at its start (`centre`: of a training sample, as the model sees it, or zero), and the L1 warm-up's
        length."""
        rows, centre = sample.flatten(1).float(), self.config.centre
        if centre == "auto":
            centre = self.sparsity.centre
        centre = {"median": geometric_median, "mean": lambda r: r.mean(0), "zero": lambda r: r[0] * 0}[centre](rows)
        if self.data_kind == "images":  # the decoder speaks logits
            centre = torch.logit(centre.clamp(0.01, 0.99))
        self.decoder[0].bias.copy_(centre)
        self.sparsity.initialise(self, steps)

    # -- the code -------------------------------------------------------------------------------------------------

    def one_layer(self) -> bool:
        """Whether the encoder is the usual SAE's single linear map (no hidden widths, no convolutions)."""
        return not self.config.hidden and self.config.arch == "mlp"

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """W_enc (x - b_dec) + b_enc, b_dec as an input (for images: the picture its logits stand for). A one-layer
        encoder computes it as W_enc x + (b_enc - W_enc b_dec): the same map, whose backward gives b_dec its gradient
        by a matrix-vector product, not by a (batch x latent x d) product through every centred input as SAELens
        does (a tenth of an L1 step)."""
        centre = self.output(self.b_dec)
        if self.one_layer():
            linear = self.encoder[-1]
            return F.linear(x.flatten(1), linear.weight, linear.bias - linear.weight @ centre.flatten())
        return self.encoder(x - centre)

    def sparse_code(self, pre: torch.Tensor, batch: bool) -> torch.Tensor:
        """The code (b, latent) from pre-activations; `batch`: training, where batchtopk picks over the batch."""
        return self.sparsity.code(self, pre, batch)

    def atom_norms(self) -> torch.Tensor:
        """(latent,): each atom's norm, without gradient."""
        return self.decoder[0].weight.detach().norm(dim=0)

    def unit_thresholds(self) -> torch.Tensor | None:
        """(latent,): the pre-activation each unit must pass at inference, where the sparsity fixes one per unit
        (jumprelu, batchtopk); else None."""
        return self.sparsity.unit_thresholds(self)

    @torch.no_grad()
    def dictionary(self) -> dict[str, torch.Tensor]:
        """A one-layer SAE of vectors as SAE libraries hold it, in raw units (SAELens's names, float64 on the CPU):
        W_enc (d_in, d_sae), b_enc, W_dec (d_sae, d_in), b_dec, and threshold (d_sae,) where the sparsity fixes one
        per unit. The standardisation s = (x - mean) / std is folded in (aelab.runs.saelens says how)."""
        encoder, decoder = self.encoder[-1], self.decoder[0]
        mean, std = self.in_mean.double().cpu(), self.in_std.double().cpu()
        w_enc = encoder.weight.double().cpu().T                              # (d_in, d_sae)
        w_dec = decoder.weight.double().cpu().T                              # (d_sae, d_in)
        tensors = {"W_enc": w_enc / std[:, None], "b_enc": encoder.bias.double().cpu(),
                   "W_dec": w_dec * std[None, :], "b_dec": mean + std * decoder.bias.double().cpu()}
        # the threshold compares pre-activations, which the fold leaves in aelab's units: no rescaling
        thresholds = self.unit_thresholds()  # jumprelu's learned ones; batchtopk's running one over each atom's norm
        if thresholds is not None:
            tensors["threshold"] = thresholds.double().cpu()
        return tensors

    def code(self, x: torch.Tensor) -> torch.Tensor:
        return self.sparse_code(self.pre_activations(x), batch=self.training)

    def code_eval(self, x: torch.Tensor) -> torch.Tensor:
        """The sparse non-negative code (b, latent) of inputs x, each input alone."""
        return self.sparse_code(self.pre_activations(x), batch=False)

    # -- the objective --------------------------------------------------------------------------------------------

    def dead(self) -> torch.Tensor:
        """(latent,) bool: units not active over the last dead_window training inputs."""
        return self.inputs_since_active >= self.dead_window()

    def dead_window(self) -> int:
        """Training inputs a unit may stay silent before it counts as dead: the setting, or the sparsity's own."""
        return self.config.dead_window or self.sparsity.dead_window

    def gathers(self) -> bool:
        """Whether a training step codes by gathering (KeepsK: TopK, BatchTopK on the CPU)."""
        return self.sparsity.gathers(self)

    def centred(self, x: torch.Tensor) -> torch.Tensor:
        """x - b_dec, flattened: what a one-layer encoder reads."""
        return (x - self.output(self.b_dec)).flatten(1)

    def terms_and_firing(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor, object]:
        """The loss terms of batch x, how often each unit fired in it (latent,), and what the sparsity's after_step
        needs from it."""
        gathered_step = self.gathers()
        centred = cols = None
        if gathered_step:
            centred, linear = self.centred(x), self.encoder[-1]
            with torch.no_grad():
                pre = F.linear(centred, linear.weight, linear.bias)
            rows, cols, offsets = self.sparsity.pick(self, pre, min(self.config.k, self.config.latent))
            kept = gathered(self, pre, centred, rows, cols)                # (m,)
            # the sum over each input's kept units of value * atom, (b, d)
            out = (F.embedding_bag(cols, self.decoder[0].weight.t().contiguous(), offsets, mode="sum",
                                   per_sample_weights=kept) + self.decoder[0].bias).view_as(x)
            fired = torch.zeros(self.config.latent, device=x.device).index_add_(0, cols, (kept > 0).float())
        else:
            pre = self.pre_activations(x)
            kept = self.sparse_code(pre, batch=self.training)              # (b, latent)
            out = self.decoder(kept)
            # the code is non-negative: its sign is 1 where a unit fired (a fifth of the time of (kept > 0) summed)
            fired = kept.detach().sign().sum(0, dtype=torch.float32)
        recon = self.recon_error(out, x)
        terms = {"loss": recon, "recon": recon}
        own, penalty = self.sparsity.terms(self, pre, kept, out, x, centred)
        if own:
            terms.update(own)
            terms["loss"] = recon + penalty
        terms.update(self.report_card(fired.sum() / len(x), out, x))
        return terms, fired, self.sparsity.before_step(self, kept, cols)

    @torch.no_grad()
    def report_card(self, l0: torch.Tensor, out: torch.Tensor, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The field's per-batch measures: L0 (given: units active per input), FVU (against this batch's
        variance), shrinkage ||x^|| / ||x||, cosine(x^, x), and the fraction of units dead."""
        values, target = self.output(out).flatten(1).float(), x.flatten(1).float()
        norm_out, norm_x = values.norm(dim=1), target.norm(dim=1)
        return {"l0": l0,
                "fvu": (values - target).pow(2).sum() / (target - target.mean(0)).pow(2).sum().clamp_min(1e-12),
                "shrinkage": (norm_out / norm_x.clamp_min(1e-12)).mean(),
                "cosine": F.cosine_similarity(values, target, dim=1).mean(),
                "dead_fraction": self.dead().float().mean()}

    def loss(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The reconstruction plus the sparsity's own term ("aux", "l0_penalty" or "l1"), and the report card."""
        return self.terms_and_firing(x)[0]

    def training_steps(self, x: torch.Tensor):
        terms, fired, seen = self.terms_and_firing(x)
        yield 0, terms["loss"]
        with torch.no_grad():  # the trainer has stepped
            self.sparsity.after_step(self, seen)  # units active anywhere in the global batch, and its size: one sum over the ranks
            counts = devices.all_sum(torch.cat([(fired > 0).long(), torch.tensor([len(x)], device=fired.device)]))
            self.inputs_since_active.add_(counts[-1]).masked_fill_(counts[:-1] > 0, 0)
            self.steps_done.add_(1)
        return terms

    # -- what it reports ------------------------------------------------------------------------------------------

    @torch.no_grad()
    def atoms(self) -> torch.Tensor:
        """The dictionary, one atom per code unit (latent, *in_shape): for vectors in their own units (times the
        training scale), for images in logits."""
        atoms = self.decoder[0].weight.T.reshape(-1, *self.config.in_shape)
        return atoms * self.in_std if self.data_kind == "vectors" else atoms.clone()

    @torch.no_grad()
    def firing(self, test) -> tuple[torch.Tensor, float, torch.Tensor]:
        """On a test set: how often each unit fires (latent,), the summed squared error of the reconstructions, and
        per input its (||x^|| / ||x||, cosine) summed, (2,)."""
        self.eval()
        fires = torch.zeros(self.config.latent, device=self.device)
        sse, sums = 0.0, torch.zeros(2, device=self.device)
        for x in test.batches(2500):
            z = self.code_eval(x)
            out = self.decoder(z)
            fires += (z > 0).sum(0)
            card = self.report_card((z > 0).sum(1).float().mean(), out, x)
            sums += torch.stack([card["shrinkage"], card["cosine"]]) * len(x)
            sse += (self.output(out) - x).pow(2).sum().item()
        return fires / len(test), sse, sums / len(test)

    @torch.no_grad()
    def measures(self, test) -> dict:
        """The report card on the test set: FVU, L0, dead units (not active over the last dead_window training
        inputs; and never active on the test set), shrinkage and cosine."""
        density, sse, (shrinkage, cosine) = self.firing(test)
        x_sum, x_sq = 0.0, 0.0
        for x in test.batches(2500):
            x_sum, x_sq = x_sum + x.double().sum(0), x_sq + x.double().pow(2).sum().item()
        variance = x_sq - (x_sum.pow(2).sum() / len(test)).item()
        dead = int(self.dead().sum())
        return {"fvu": sse / max(variance, 1e-12), "l0": float(density.sum()), "dead_units": dead,
                "dead_fraction": dead / self.config.latent, "dead_window": self.dead_window(),
                "dead_on_test": int((density == 0).sum()), "shrinkage": float(shrinkage), "cosine": float(cosine)}

    def make_pictures(self, test) -> dict:
        pictures = {"density.png": density_plot(self.firing(test)[0].cpu().numpy())}
        if self.data_kind == "images":
            atoms = self.atoms()[:100].float()
            low, high = atoms.flatten(1).aminmax(dim=1)
            pictures["atoms.png"] = tile((atoms - low.view(-1, 1, 1, 1))
                                         / (high - low).clamp_min(1e-12).view(-1, 1, 1, 1), 10, 10, pad=1)
        return pictures


def density_plot(density: np.ndarray) -> np.ndarray:
    """A histogram of log10 firing frequency per unit (units that never fired in their own red bar at the left),
    as an RGB uint8 image."""
    from aelab.pictures.charts import bar_chart

    fired = density[density > 0]
    low = math.floor(min(np.log10(fired).min(), -6)) if len(fired) else -6
    counts, edges = np.histogram(np.log10(fired), bins=np.linspace(low, 0, 41))
    bars = [(a, b, int(n), (76, 114, 176)) for a, b, n in zip(edges, edges[1:], counts)]
    never = int((density == 0).sum())
    if never:
        bars.append((low - 0.55, low - 0.25, never, (196, 78, 82)))
    return bar_chart(bars, "log10 firing frequency on the test set", "units",
                     (f"never fired: {never}", (196, 78, 82)) if never else None)
