"""Sparse autoencoders as interpretability work trains them on a network's activations: a linear dictionary
decoder x^ = W_dec z + b_dec and a sparse non-negative code z = act(W_enc (x - b_dec) + b_enc), the decoder bias
subtracted first (Bricken et al. 2023; on images the decoder speaks logits, so there b_dec is just a learned shift).

Four sparsities, each as its paper trains it:
- topk: the k largest pre-activations of each input, ReLU'd (Makhzani & Frey 2013; Gao et al. 2024), with the AuxK
  loss: the k_aux largest pre-activations of the dead units reconstruct the error the live ones leave;
- batchtopk: the k * batch largest over the whole batch (Bussmann et al. 2024), AuxK too, as SAELens trains it:
  over free-norm atoms, each unit ranked by its pre-activation times its atom's norm (the size of what it adds to
  the reconstruction: SAELens's rescale_acts_by_decoder_norm); inference keeps pre-activations whose product with
  their atom's norm passes a running estimate of the smallest kept one, so one input's code never depends on its
  batch;
- jumprelu: z = pre * H(pre - theta), a learned threshold per unit trained by a straight-through estimator with a
  rectangle kernel of width `bandwidth`, and an L0 penalty (Rajamanoharan et al. 2024), as SAELens trains it: the
  threshold is the parameter itself, kept >= 0 after each step, not its log as that paper has it (Adam moves a
  parameter by about lr a step, so a log barely moves a small threshold: SAELens's issue #494), over free-norm atoms
  and with the gradient's norm clipped;
- l1: ReLU and the penalty sum_i z_i ||W_dec[:, i]|| over free-norm atoms, its weight warmed up linearly, and the
  gradient's norm clipped (Anthropic, "Circuits Updates", April 2024).
Every form's atoms are free and start short (`atom_norm`, Anthropic's April 2024 update; SAELens), and every form clips
the gradient's norm and takes Adam's epsilon as SAELens does. TopK so recovers far more known features than over
OpenAI's unit-norm atoms with projected gradients, and BatchTopK leaves far fewer units dead (docs/sae.md).
`initialise` puts b_dec at the geometric median (or mean) of a sample of the training data, l1's at zero; the encoder
starts as the decoder's transpose (Gao et al. 2024).
Reported, as that field does: L0, FVU, shrinkage (||x^|| / ||x||), cosine(x^, x), the dead units (not active over
the last `dead_window` training inputs, counted in a buffer so checkpoints and resume keep the count) and the
density of each unit's firing."""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from aelab import devices
from aelab.errors import UserError
from aelab.models.base import AEConfig, Autoencoder, adam
from aelab.pictures.images import tile

SPARSITIES = ("topk", "batchtopk", "jumprelu", "l1")
CENTRES = ("auto", "median", "mean", "zero")
GUESS = 0.8  # batchtopk: a batch's cut is above this share of the running threshold (else it is found the long way)
THRESHOLD_DECAY = 0.99  # batchtopk: weight of the running threshold against each batch's smallest kept activation


@dataclass
class SAEConfig(AEConfig):
    latent: int = 256                # dictionary size: units in the code
    hidden: tuple[int, ...] = ()     # encoder widths before the code (none: the usual one-layer SAE); the
    #                                  decoder is always one linear map, the dictionary
    sparsity: str = "topk"           # one of SPARSITIES
    k: int = 32                      # topk, batchtopk: units kept per input (on average over the batch for batchtopk)
    k_aux: int = 0                   # topk, batchtopk: dead units AuxK uses per input (0: half the input's size, as
    #                                  Gao et al.); never more than are dead
    aux_coefficient: float = 1 / 32  # topk, batchtopk: weight of the AuxK loss (0: none)
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
    #                                  "zero", or "auto": zero for l1 (as SAELens starts it: from the median, the same
    #                                  l1 gives a higher L0 and recovers fewer known features), else the median
    dead_window: int = 100_000       # a unit not active over this many training inputs counts as dead

    def check(self) -> None:
        super().check()
        if self.sparsity not in SPARSITIES:
            raise UserError(f"unknown sparsity {self.sparsity!r}; use --set sparsity= one of {', '.join(SPARSITIES)}")
        if self.centre not in CENTRES:
            raise UserError(f"unknown centre {self.centre!r}; use --set centre= one of {', '.join(CENTRES)}")
        if self.k < 1 or self.k_aux < 0 or self.dead_window < 1:
            raise UserError("k and dead_window must be at least 1, and k_aux at least 0 (0: half the input's size)")
        if min(self.l1, self.l0_coefficient, self.aux_coefficient, self.grad_clip) < 0:
            raise UserError("l1, l0_coefficient, aux_coefficient and grad_clip must not be negative")
        if not 0 <= self.l1_warmup <= 1:
            raise UserError(f"l1_warmup is a fraction of the run's steps, in [0, 1], not {self.l1_warmup}")
        if min(self.bandwidth, self.threshold, self.atom_norm) <= 0:
            raise UserError("bandwidth, threshold and atom_norm must be positive, e.g. --set bandwidth=0.05")


def planted_dictionary(n: int, d: int = 64, atoms: int = 256, active: int = 5, noise: float = 0.01, seed: int = 0
                       ) -> tuple[np.ndarray, np.ndarray]:
    """A known answer for sparse autoencoders: `atoms` random unit vectors in d dimensions, and n vectors each a
    mix of `active` distinct atoms with weights uniform in [0.5, 1.5], plus N(0, noise^2) per value.
    Returns (vectors (n, d) float32, atoms (atoms, d) float64)."""
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


def geometric_median(x: torch.Tensor, iterations: int = 20) -> torch.Tensor:
    """The point of least summed distance to the rows of x (n, d), by Weiszfeld's iterations from the mean."""
    x = x.double()
    m = x.mean(0)
    for _ in range(iterations):
        w = 1 / (x - m).norm(dim=1).clamp_min(1e-8)
        m = (w[:, None] * x).sum(0) / w.sum()
    return m.float()


class _JumpReLU(torch.autograd.Function):
    """z = pre * H(pre - t). Gradient to pre where active; to the threshold t the straight-through estimate
    -(t / eps) K((pre - t) / eps), K the unit rectangle (Rajamanoharan et al. 2024, eq. 11)."""

    @staticmethod
    def forward(ctx, pre, threshold, eps):
        ctx.save_for_backward(pre, threshold)
        ctx.eps = eps
        return pre * (pre > threshold)

    @staticmethod
    def backward(ctx, grad):
        pre, threshold = ctx.saved_tensors
        near = ((pre - threshold).abs() < ctx.eps / 2).to(grad.dtype)
        return grad * (pre > threshold), (-(threshold / ctx.eps) * near * grad).sum(0), None


class _Step(torch.autograd.Function):
    """H(pre - t), the count L0 is made of; its gradient to t is -(1 / eps) K((pre - t) / eps), none to pre."""

    @staticmethod
    def forward(ctx, pre, threshold, eps):
        ctx.save_for_backward(pre, threshold)
        ctx.eps = eps
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):
        pre, threshold = ctx.saved_tensors
        near = ((pre - threshold).abs() < ctx.eps / 2).to(grad.dtype)
        return None, (-near * grad / ctx.eps).sum(0), None


class _ClippedAdam(torch.optim.Adam):
    """aelab's Adam (models.base.adam) that first clips the gradients' global norm at `max_norm`."""

    def __init__(self, params, lr: float, max_norm: float, eps: float):
        made = adam(params, lr, eps=eps)
        super().__init__(made.param_groups, **made.defaults)
        self.max_norm = max_norm

    @torch.no_grad()
    def step(self, closure=None):
        torch.nn.utils.clip_grad_norm_([p for group in self.param_groups for p in group["params"]], self.max_norm)
        return _ADAM_STEP(self, closure)


_ADAM_STEP = inspect.unwrap(torch.optim.Adam.step)  # without its wrappers, as train.eager_optimizers steps


def _every_rank(t: torch.Tensor) -> torch.Tensor:
    """(world, *t.shape): row r is rank r's t (one all-reduce of rows that are zero but the rank's own)."""
    rows = t.new_zeros((devices.world_size(), *t.shape))
    rows[devices.rank()] = t
    return devices.all_sum(rows)


class _Kept(torch.autograd.Function):
    """The kept entries pre[rows, cols] of pre = centred W_enc^T + b_enc, as a function of W_enc, b_enc and centred.
    Their gradient is sparse, m = (inputs x k) entries of (b, latent): the backward multiplies it as a sparse
    matrix, about k / latent of the dense backward's work, and nothing of size m x d is ever made."""

    @staticmethod
    def forward(ctx, values, weight, bias, centred, rows, cols):
        ctx.save_for_backward(weight, centred, rows, cols)
        return values

    @staticmethod
    def backward(ctx, grad):
        weight, centred, rows, cols = ctx.saved_tensors
        latent, b = weight.shape[0], centred.shape[0]
        by_unit = torch.sparse_coo_tensor(torch.stack([cols, rows]), grad, (latent, b), check_invariants=False)
        by_input = torch.sparse_coo_tensor(torch.stack([rows, cols]), grad, (b, latent), check_invariants=False)
        return (None, torch.sparse.mm(by_unit, centred), grad.new_zeros(latent).index_add_(0, cols, grad),
                torch.sparse.mm(by_input, weight), None, None)


def _largest(values: torch.Tensor, n: int, below: torch.Tensor) -> torch.Tensor:
    """Indices of the n largest of the flat `values`, ascending. On the CPU, the values at or above `below` (a
    guess under the n-th largest: BatchTopK's running threshold, scaled down) hold every one of them when there are
    at least n: topk over those few costs a fraction of topk over the whole batch's code, and picks the same."""
    if values.device.type == "cpu" and below > 0:
        near = (values >= below).nonzero().squeeze(1)
        if len(near) >= n:
            return near[values[near].topk(n).indices].sort().values
    return values.topk(n).indices.sort().values


def _global_batch_top(pre: torch.Tensor, ranked: torch.Tensor, k: int) -> torch.Tensor:
    """BatchTopK over the global batch under torchrun: pre-activations of this rank's rows (pre) ReLU'd where
    `ranked` (pre times the atoms' norms) is among the k * (global batch) largest of all ranks. Each rank's own
    largest k * (global batch) hold every kept one, so the cut, the k * B-th largest of them all, is what one process
    taking the whole batch would find."""
    kept = k * devices.batch_rows(len(pre))[1]
    mine = ranked.detach().reshape(-1).topk(min(kept, pre.numel())).values
    candidates = torch.cat([mine, mine.new_full((kept - len(mine),), -torch.inf)])  # the same length on every rank
    cut = _every_rank(candidates).reshape(-1).topk(kept).values[-1]
    return torch.relu(pre) * (ranked >= cut)


class SparseAutoencoder(Autoencoder):
    """Sparse AE (TopK, BatchTopK, JumpReLU or L1) over a linear dictionary; L0, FVU, shrinkage and dead units."""

    Config = SAEConfig
    pictures = {"atoms.png": "The first 100 atoms of the dictionary, each scaled to its own range",
                "density.png": "Feature density: log10 of how often each unit fires on the test set"}

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
        # the inference threshold: jumprelu's learned one per unit; batchtopk's running estimate, a buffer (< 0: not
        # yet estimated); saved with the weights and checkpoints either way
        if config.sparsity == "jumprelu":
            self.threshold = nn.Parameter(torch.full((config.latent,), config.threshold))
        else:
            self.register_buffer("threshold", torch.full((), -1.0))
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
            return [_ClippedAdam(self.parameters(), lr, self.config.grad_clip / size, eps=1e-8 / size)]
        return [adam(self.parameters(), lr, eps=1e-8 / size)]

    def _load_from_state_dict(self, state_dict, prefix, *args) -> None:
        # a JumpReLU saved when it trained log(threshold): its threshold is exp of that (the scalar buffer it also
        # saved was unused)
        if prefix + "log_threshold" in state_dict:
            state_dict[prefix + "threshold"] = state_dict.pop(prefix + "log_threshold").exp()
        super()._load_from_state_dict(state_dict, prefix, *args)

    def older_layout(self, like: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor] | None:
        """The tensors a saved state of the older layout holds, given this model's (`like`, named after `prefix`):
        a JumpReLU that trained log_threshold (latent,) beside a scalar threshold; None for the other sparsities.
        load_state_dict reads either."""
        if self.config.sparsity != "jumprelu":
            return None
        return {**like, prefix + "log_threshold": like[prefix + "threshold"], prefix + "threshold": torch.zeros(())}

    @property
    def b_dec(self) -> torch.Tensor:
        return self.decoder[0].bias.view(self.config.in_shape)

    @torch.no_grad()
    def initialise(self, sample: torch.Tensor, steps: int, size: int = 0) -> None:
        """b_dec at its start (`centre`: of a training sample, as the model sees it, or zero), and the L1 warm-up's
        length."""
        rows, centre = sample.flatten(1).float(), self.config.centre
        if centre == "auto":
            centre = "zero" if self.config.sparsity == "l1" else "median"
        centre = {"median": geometric_median, "mean": lambda r: r.mean(0), "zero": lambda r: r[0] * 0}[centre](rows)
        if self.data_kind(self.config) == "images":  # the decoder speaks logits
            centre = torch.logit(centre.clamp(0.01, 0.99))
        self.decoder[0].bias.copy_(centre)
        if self.config.sparsity == "l1":  # the plan of a new run; a resumed one keeps its own
            self.l1_warmup_steps.fill_(round(self.config.l1_warmup * steps))

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
        """The code (b, latent) from pre-activations; `batch`: batchtopk picks over the batch (training)."""
        sparsity, k = self.config.sparsity, min(self.config.k, self.config.latent)
        if sparsity == "batchtopk" and batch and devices.world_size() > 1:
            return _global_batch_top(pre, pre.detach() * self.atom_norms(), k)
        if sparsity == "topk":
            top = pre.topk(k, dim=1)
            return torch.zeros_like(pre).scatter_(1, top.indices, torch.relu(top.values))
        if sparsity == "batchtopk" and batch:
            top = _largest((pre.detach() * self.atom_norms()).flatten(), k * len(pre), self.threshold * GUESS)
            flat = pre.flatten()
            return torch.zeros_like(flat).scatter_(0, top, torch.relu(flat[top])).view_as(pre)
        if sparsity == "batchtopk":
            return pre * (pre > self.unit_thresholds())
        if sparsity == "jumprelu":
            return _JumpReLU.apply(pre, self.threshold, self.config.bandwidth)
        return torch.relu(pre)

    def atom_norms(self) -> torch.Tensor:
        """(latent,): each atom's norm, without gradient."""
        return self.decoder[0].weight.detach().norm(dim=0)

    def unit_thresholds(self) -> torch.Tensor:
        """batchtopk at inference, (latent,): a unit is kept where its pre-activation passes the running threshold
        over its atom's norm (its pre-activation times that norm passes the threshold); < 0 (never estimated) reads
        as 0: plain ReLU."""
        return self.threshold.clamp_min(0) / self.atom_norms().clamp_min(1e-12)

    def code(self, x: torch.Tensor) -> torch.Tensor:
        return self.sparse_code(self.pre_activations(x), batch=self.training)

    def code_eval(self, x: torch.Tensor) -> torch.Tensor:
        """The sparse non-negative code (b, latent) of inputs x, each input alone."""
        return self.sparse_code(self.pre_activations(x), batch=False)

    # -- the objective --------------------------------------------------------------------------------------------

    def dead(self) -> torch.Tensor:
        """(latent,) bool: units not active over the last dead_window training inputs."""
        return self.inputs_since_active >= self.config.dead_window

    def gathers(self) -> bool:
        """Whether a training step codes by gathering: TopK or BatchTopK on a one-layer encoder keep k units per
        input, so the pre-activations are found without autograd and only the kept units' rows of W_enc and atoms
        of W_dec take part in the differentiated step (the loss and gradients of the dense code, for about
        k / latent of its backward pass; AuxK adds the dead units alone). On the CPU: a GPU keeps the dense code,
        with no host sync and the static shapes a captured CUDA graph needs."""
        c = self.config
        return (self.training and c.sparsity in ("topk", "batchtopk") and self.one_layer() and self.device.type == "cpu"
                and not (c.sparsity == "batchtopk" and devices.world_size() > 1))  # that picks over all ranks

    def picked(self, pre: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The kept units of pre-activations (b, latent) as (rows, cols, offsets): each input's k largest, or for
        batchtopk the k * b largest of the batch, each times its atom's norm; rows ascending, offsets each input's
        first, (b,)."""
        b, arange = len(pre), torch.arange(len(pre), device=pre.device)
        if self.config.sparsity == "topk":
            return arange.repeat_interleave(k), pre.topk(k, dim=1).indices.flatten(), arange * k
        flat = _largest((pre * self.atom_norms()).flatten(), k * b, self.threshold * GUESS)
        rows = flat // pre.shape[1]
        return rows, flat % pre.shape[1], torch.searchsorted(rows, arange)

    def gathered(self, pre: torch.Tensor, centred: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
                 ) -> torch.Tensor:
        """ReLU'd pre-activations of units `cols` for inputs `rows`, (m,): taken from pre (found without autograd)
        and differentiable in W_enc, b_enc and centred (b, d) through sparse products (_Kept)."""
        linear = self.encoder[-1]
        return torch.relu(_Kept.apply(pre[rows, cols], linear.weight, linear.bias, centred, rows, cols))

    def decode_gathered(self, cols: torch.Tensor, offsets: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """The sum over each input's kept units of value * atom, (b, d) without b_dec."""
        return F.embedding_bag(cols, self.decoder[0].weight.t().contiguous(), offsets, mode="sum",
                               per_sample_weights=values)

    def centred(self, x: torch.Tensor) -> torch.Tensor:
        """x - b_dec, flattened: what a one-layer encoder reads."""
        return (x - self.output(self.b_dec)).flatten(1)

    def aux_loss(self, pre: torch.Tensor, out: torch.Tensor, x: torch.Tensor, centred: torch.Tensor | None = None
                 ) -> torch.Tensor:
        """AuxK (Gao et al. 2024, appendix A.2): the k_aux largest pre-activations of dead units reconstruct what
        the live code leaves, measured relative to that error; 0 while no unit is dead. On the CPU only the dead
        units take part (none: skipped, which costs no device sync there), their pre-activations taken from pre, or
        recomputed from `centred` where a gathered step found pre without autograd; a GPU, and a captured CUDA
        graph, keep static shapes: every unit, the live ones at -inf, times 0 while none is dead."""
        dead, atoms = self.dead(), self.decoder[0].weight
        if self.device.type == "cpu":
            if not dead.any():
                return out.new_zeros(())
            units = dead.nonzero().squeeze(1)
            linear = self.encoder[-1]
            pre = pre[:, units] if centred is None else F.linear(centred, linear.weight[units], linear.bias[units])
            atoms = atoms[:, units]
        else:
            pre = pre.masked_fill(~dead, -torch.inf)
        k_aux = min(self.config.k_aux or max(1, math.prod(self.config.in_shape) // 2), pre.shape[1])
        top = pre.topk(k_aux, dim=1, sorted=False)  # unsorted: the scatter takes any order (a third faster)
        z_aux = torch.zeros_like(pre).scatter_(1, top.indices, torch.relu(top.values).nan_to_num(0, 0, 0))
        live = out.detach()
        with_aux = live + F.linear(z_aux, atoms).view_as(live)
        # relative to the live code's error over the global batch: under torchrun the ranks' shares then add up to
        # the single process's loss, where a ratio per rank would weigh each rank's own error
        error = devices.global_mean(self.recon_error(live, x), len(x))
        ratio = self.recon_error(with_aux, x) / error.clamp_min(1e-12)
        return ratio * dead.any()

    def terms_and_firing(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """The loss terms of batch x, how often each unit fired in it (latent,), and the kept activations (batchtopk's
        times their atoms' norms, without gradient: what its running threshold follows): (m,) when gathered, else the
        dense code (b, latent)."""
        gathered = self.gathers()
        if gathered:
            centred, linear = self.centred(x), self.encoder[-1]
            with torch.no_grad():
                pre = F.linear(centred, linear.weight, linear.bias)
            rows, cols, offsets = self.picked(pre, min(self.config.k, self.config.latent))
            kept = self.gathered(pre, centred, rows, cols)
            out = (self.decode_gathered(cols, offsets, kept) + self.decoder[0].bias).view_as(x)
            fired = torch.zeros(self.config.latent, device=x.device).index_add_(0, cols, (kept > 0).float())
        else:
            pre = self.pre_activations(x)
            kept = self.sparse_code(pre, batch=self.training)
            out = self.decoder(kept)
            # the code is non-negative: its sign is 1 where a unit fired (a fifth of the time of (kept > 0) summed)
            fired = kept.detach().sign().sum(0, dtype=torch.float32)
        recon = self.recon_error(out, x)
        terms = {"loss": recon, "recon": recon}
        sparsity, size = self.config.sparsity, math.prod(self.config.in_shape)
        if sparsity in ("topk", "batchtopk") and self.config.aux_coefficient:
            terms["aux"] = self.aux_loss(pre, out, x, centred if gathered else None)
            terms["loss"] = terms["loss"] + self.config.aux_coefficient * terms["aux"]
        elif sparsity == "jumprelu":
            terms["l0_penalty"] = _Step.apply(pre, self.threshold, self.config.bandwidth).sum(1).mean()
            terms["loss"] = terms["loss"] + self.config.l0_coefficient / size * terms["l0_penalty"]
        elif sparsity == "l1":
            # the code is ReLU'd (|f| = f): a matrix-vector product, the same penalty without a (batch, latent)
            # product, whose backward is slower still (a sixth of the step)
            terms["l1"] = (kept.float() @ self.decoder[0].weight.norm(dim=0)).sum() / len(x)
            warm = ((self.steps_done + 1).float() / self.l1_warmup_steps.clamp_min(1)).clamp(max=1)
            terms["loss"] = terms["loss"] + self.config.l1 / size * warm * terms["l1"]
        terms.update(self.report_card(fired.sum() / len(x), out, x))
        if sparsity == "batchtopk":
            kept = kept.detach() * (self.atom_norms()[cols] if gathered else self.atom_norms())
        return terms, fired, kept

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
        terms, fired, kept = self.terms_and_firing(x)
        yield 0, terms["loss"]
        # the trainer has stepped: project here, so every saved state (and a resumed run) has thresholds >= 0
        # (projected, not clamped in the graph, which would stop the gradient of a threshold at 0 for good)
        if self.config.sparsity == "jumprelu":
            self.threshold.data.clamp_(min=0)
        with torch.no_grad():  # units active anywhere in the global batch, and its size: one sum over the ranks
            counts = devices.all_sum(torch.cat([(fired > 0).long(), torch.tensor([len(x)], device=fired.device)]))
            self.inputs_since_active.add_(counts[-1]).masked_fill_(counts[:-1] > 0, 0)
            self.steps_done.add_(1)
            if self.config.sparsity == "batchtopk":  # the global batch's smallest kept activation times its atom's
                # norm, EMA over batches
                low = _every_rank(kept.float().masked_fill(kept <= 0, torch.inf).amin()).amin()
                blended = torch.where(self.threshold < 0, low, THRESHOLD_DECAY * self.threshold
                                      + (1 - THRESHOLD_DECAY) * low)
                self.threshold.copy_(torch.where(low.isfinite(), blended, self.threshold))
        return terms

    # -- what it reports ------------------------------------------------------------------------------------------

    @torch.no_grad()
    def atoms(self) -> torch.Tensor:
        """The dictionary, one atom per code unit (latent, *in_shape): for vectors in their own units (times the
        training scale), for images in logits."""
        atoms = self.decoder[0].weight.T.reshape(-1, *self.config.in_shape)
        return atoms * self.in_std if self.config.recon_loss == "mse" else atoms.clone()

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
                "dead_fraction": dead / self.config.latent, "dead_window": self.config.dead_window,
                "dead_on_test": int((density == 0).sum()), "shrinkage": float(shrinkage), "cosine": float(cosine)}

    def make_pictures(self, test) -> dict:
        pictures = {"density.png": density_plot(self.firing(test)[0].cpu().numpy())}
        if self.data_kind(self.config) == "images":
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
