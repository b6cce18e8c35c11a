"""The sparsities a sparse autoencoder (models/sparse.py) codes with: one small class each, registered by name in
SPARSITIES. The model holds one and asks it the few things that differ between them; a new sparsity is one subclass
of Sparsity and one `register_sparsity` call (docs/extending.md).

- topk: the k largest pre-activations of each input, ReLU'd (Makhzani & Frey 2013; Gao et al. 2024), with the AuxK
  loss: the k_aux largest pre-activations of the dead units reconstruct the error the live ones leave;
- batchtopk: the k * batch largest over the whole batch (Bussmann et al. 2024), AuxK too, as SAELens trains it:
  each unit ranked by its pre-activation times its atom's norm (the size of what it adds to the reconstruction:
  SAELens's rescale_acts_by_decoder_norm); inference keeps pre-activations whose product with their atom's norm passes
  a running estimate of the smallest kept one, so one input's code never depends on its batch;
- jumprelu: z = pre * H(pre - theta), a learned threshold per unit trained by a straight-through estimator with a
  rectangle kernel of width `bandwidth`, and an L0 penalty (Rajamanoharan et al. 2024), as SAELens trains it: the
  threshold is the parameter itself, kept >= 0 after each step, not its log as that paper has it (Adam moves a
  parameter by about lr a step, so a log barely moves a small threshold: SAELens's issue #494); and its own AuxK:
  the k_aux largest pre-activations of the units silent on an input fit the error the live code leaves;
- l1: ReLU and the penalty sum_i z_i ||W_dec[:, i]||, its weight warmed up linearly (Anthropic, "Circuits Updates",
  April 2024)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from aelab import devices
from aelab.models.contract import register_in

GUESS = 0.8  # batchtopk: a batch's cut is above this share of the running threshold (else it is found the long way)
THRESHOLD_DECAY = 0.99  # batchtopk: weight of the running threshold against each batch's smallest kept activation


class Sparsity:
    """How an SAE makes its code sparse. The model (`sae`, a models.sparse.SparseAutoencoder) passes itself to each
    hook; a hook object holds no state of its own, so what must be saved lives on the model (its `threshold`)."""

    centre = "median"  # where b_dec starts under centre "auto"
    dead_window = 100_000  # training inputs a unit may stay silent before it counts as dead, under dead_window 0

    def threshold(self, config) -> torch.Tensor:
        """The model's `threshold`, saved with its weights: what inference needs beyond the weights (a buffer, or a
        parameter that trains). By default an unused scalar < 0, so every saved layout has the same names."""
        return torch.full((), -1.0)

    def code(self, sae, pre: torch.Tensor, batch: bool) -> torch.Tensor:
        """The code (b, latent) from pre-activations (b, latent); `batch`: training, where the batch may decide."""
        return torch.relu(pre)

    def gathers(self, sae) -> bool:
        """Whether this training step keeps a few units per input found without autograd (`pick`): the gathered
        step of KeepsK."""
        return False

    def terms(self, sae, pre: torch.Tensor, code: torch.Tensor, out: torch.Tensor, x: torch.Tensor,
              centred: torch.Tensor | None) -> tuple[dict[str, torch.Tensor], torch.Tensor | float]:
        """The sparsity's own loss terms, by name for the log, and what they add to the loss. `code` is the dense
        code (b, latent), or the kept values (m,) of a gathered step (then `centred`, x - b_dec flattened, is
        given)."""
        return {}, 0.0

    def before_step(self, sae, code: torch.Tensor, cols: torch.Tensor | None):
        """What `after_step` needs from this batch, taken before the optimizer moves the weights."""
        return None

    def after_step(self, sae, seen) -> None:
        """After the optimizer's step, in no_grad: keep the sparsity's own state (projections, running estimates)."""

    def initialise(self, sae, steps: int) -> None:
        """At the start of a new run of `steps` steps (not on resume)."""

    def older_layout(self, like: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor] | None:
        """The tensors an older saved layout of this sparsity holds, given the current ones (`like`); None: none."""
        return None

    def upgrade(self, state_dict: dict[str, torch.Tensor], prefix: str) -> None:
        """Turn a state saved in an older layout into the current one, in place, before it loads."""

    def unit_thresholds(self, sae) -> torch.Tensor | None:
        """(latent,): the pre-activation each unit must pass at inference, where the sparsity has one fixed per
        unit (what SAELens's JumpReLU stores); None where it has none."""
        return None


# -- TopK and BatchTopK: k units per input, the gathered step, AuxK --------------------------------------------------

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


def gathered(sae, pre: torch.Tensor, centred: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """ReLU'd pre-activations of units `cols` for inputs `rows`, (m,): taken from pre (found without autograd) and
    differentiable in W_enc, b_enc and centred (b, d) through sparse products (_Kept)."""
    linear = sae.encoder[-1]
    return torch.relu(_Kept.apply(pre[rows, cols], linear.weight, linear.bias, centred, rows, cols))


def aux_loss(sae, pre: torch.Tensor, out: torch.Tensor, x: torch.Tensor, centred: torch.Tensor | None = None
             ) -> torch.Tensor:
    """AuxK (Gao et al. 2024, appendix A.2): the k_aux largest pre-activations of dead units reconstruct what the live
    code leaves, measured relative to that error; 0 while no unit is dead. On the CPU only the dead units take part
    (none: skipped, which costs no device sync there), their pre-activations taken from pre, or recomputed from
    `centred` where a gathered step found pre without autograd; a GPU, and a captured CUDA graph, keep static shapes:
    every unit, the live ones at -inf, times 0 while none is dead."""
    dead, atoms = sae.dead(), sae.decoder[0].weight
    if sae.device.type == "cpu":
        if not dead.any():
            return out.new_zeros(())
        units = dead.nonzero().squeeze(1)
        linear = sae.encoder[-1]
        pre = pre[:, units] if centred is None else F.linear(centred, linear.weight[units], linear.bias[units])
        atoms = atoms[:, units]
    else:
        pre = pre.masked_fill(~dead, -torch.inf)
    k_aux = min(sae.config.k_aux or sae.sparsity.k_aux(sae), pre.shape[1])
    top = pre.topk(k_aux, dim=1, sorted=False)  # unsorted: the scatter takes any order (a third faster)
    z_aux = torch.zeros_like(pre).scatter_(1, top.indices, torch.relu(top.values).nan_to_num(0, 0, 0))
    return _error_left(sae, out, F.linear(z_aux, atoms), x) * dead.any()


def _error_left(sae, out: torch.Tensor, fit: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The error of the live code's reconstruction `out` (not differentiated) plus an auxiliary `fit` (b, d), relative
    to the live code's own error over the global batch: under torchrun the ranks' shares then add up to the single
    process's loss, where a ratio per rank would weigh each rank's own error."""
    live = out.detach()
    error = devices.global_mean(sae.recon_error(live, x), len(x))
    return sae.recon_error(live + fit.view_as(live), x) / error.clamp_min(1e-12)


class KeepsK(Sparsity):
    """A sparsity that keeps k units per input (on average, for BatchTopK), with AuxK for its dead units. On the
    CPU, training on a one-layer encoder, it codes by gathering: the pre-activations are found without autograd and
    only the kept units' rows of W_enc and atoms of W_dec take part in the differentiated step (the loss and
    gradients of the dense code, for about k / latent of its backward pass; AuxK adds the dead units alone). A GPU
    keeps the dense code, with no host sync and the static shapes a captured CUDA graph needs."""

    def gathers(self, sae) -> bool:
        return sae.training and sae.one_layer() and sae.device.type == "cpu"

    def k_aux(self, sae) -> int:
        """Dead units AuxK uses per input under k_aux 0: half the input's size (Gao et al. 2024)."""
        return max(1, math.prod(sae.config.in_shape) // 2)

    def pick(self, sae, pre: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The kept units of pre-activations (b, latent) as (rows, cols, offsets): rows ascending, offsets each
        input's first, (b,)."""
        raise NotImplementedError

    aux_coefficient = 1 / 32  # AuxK's weight under aux_coefficient < 0

    def terms(self, sae, pre, code, out, x, centred):
        weight = sae.config.aux_coefficient if sae.config.aux_coefficient >= 0 else self.aux_coefficient
        if not weight:
            return {}, 0.0
        aux = aux_loss(sae, pre, out, x, centred)
        return {"aux": aux}, weight * aux


class TopK(KeepsK):
    def code(self, sae, pre, batch):
        top = pre.topk(min(sae.config.k, sae.config.latent), dim=1)
        return torch.zeros_like(pre).scatter_(1, top.indices, torch.relu(top.values))

    def pick(self, sae, pre, k):
        arange = torch.arange(len(pre), device=pre.device)
        return arange.repeat_interleave(k), pre.topk(k, dim=1).indices.flatten(), arange * k


def _every_rank(t: torch.Tensor) -> torch.Tensor:
    """(world, *t.shape): row r is rank r's t (one all-reduce of rows that are zero but the rank's own)."""
    rows = t.new_zeros((devices.world_size(), *t.shape))
    rows[devices.rank()] = t
    return devices.all_sum(rows)


def _largest(values: torch.Tensor, n: int, below: torch.Tensor) -> torch.Tensor:
    """Indices of the n largest of the flat `values`, ascending. On the CPU, the values at or above `below` (a guess
    under the n-th largest: BatchTopK's running threshold, scaled down) hold every one of them when there are at
    least n: topk over those few costs a fraction of topk over the whole batch's code, and picks the same."""
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


class BatchTopK(KeepsK):
    """`threshold` is the running estimate (a buffer, < 0 until the first step) of the smallest kept pre-activation
    times its atom's norm.

    Its own AuxK: the batch's one cut starves a unit still learning a weak or rare feature (its pre-activations stay
    under a cut set by the learned strong features, so it fires once in thousands of inputs and learns nothing, yet
    is never dead over 100 000 inputs); TopK's per-input pick gives such units the spare places of inputs with few
    strong features. So a unit silent for 10 000 inputs counts as dead here, and AuxK, weighted 0.1, fits the live
    code's error with k / 2 of them, not d / 2: a sparse fit of that error finds the missing features, a dense one
    learns its noise (docs/sae.md, "A hard dictionary")."""

    dead_window, aux_coefficient = 10_000, 0.1

    def k_aux(self, sae):
        return max(1, sae.config.k // 2)

    def scale(self, sae) -> torch.Tensor:
        """(latent,): what each unit's pre-activation is multiplied by to rank it: its atom's norm."""
        return sae.atom_norms()

    def code(self, sae, pre, batch):
        k = min(sae.config.k, sae.config.latent)
        if batch and devices.world_size() > 1:
            return _global_batch_top(pre, pre.detach() * self.scale(sae), k)
        if batch:
            top = _largest((pre.detach() * self.scale(sae)).flatten(), k * len(pre), sae.threshold * GUESS)
            flat = pre.flatten()
            return torch.zeros_like(flat).scatter_(0, top, torch.relu(flat[top])).view_as(pre)
        return pre * (pre > self.unit_thresholds(sae))

    def gathers(self, sae):
        return super().gathers(sae) and devices.world_size() == 1  # under torchrun it picks over all ranks

    def pick(self, sae, pre, k):
        b, arange = len(pre), torch.arange(len(pre), device=pre.device)
        flat = _largest((pre * self.scale(sae)).flatten(), k * b, sae.threshold * GUESS)
        rows = flat // pre.shape[1]
        return rows, flat % pre.shape[1], torch.searchsorted(rows, arange)

    def before_step(self, sae, code, cols):
        """The kept activations times their atoms' norms, without gradient: what the running threshold follows."""
        return code.detach() * (self.scale(sae)[cols] if cols is not None else self.scale(sae))

    def after_step(self, sae, seen):
        # the global batch's smallest kept activation times its atom's norm, EMA over batches
        low = _every_rank(seen.float().masked_fill(seen <= 0, torch.inf).amin()).amin()
        blended = torch.where(sae.threshold < 0, low, THRESHOLD_DECAY * sae.threshold + (1 - THRESHOLD_DECAY) * low)
        sae.threshold.copy_(torch.where(low.isfinite(), blended, sae.threshold))

    def unit_thresholds(self, sae):
        """A unit is kept where its pre-activation passes the running threshold over its atom's norm; < 0 (never
        estimated) reads as 0: plain ReLU."""
        return sae.threshold.clamp_min(0) / self.scale(sae).clamp_min(1e-12)


# -- JumpReLU ---------------------------------------------------------------------------------------------------------

class _JumpReLU(torch.autograd.Function):
    """z = pre * H(pre - t). Gradient to pre where active; to the threshold t the straight-through estimate
    -(t / eps) K((pre - t) / eps), K the unit rectangle (Rajamanoharan et al. 2024, eq. 11), plus that of the L0
    penalty `weight` sum_i H(pre_i - t_i) (per input, weight included): -(weight / eps) K((pre - t) / eps). Both from
    one mask of pre near t, in the one backward pass: the penalty as a function of its own cost a third of the step's
    time in (b, latent) elementwise work."""

    @staticmethod
    def forward(ctx, pre, threshold, eps, weight):
        active = (pre - threshold).gt_(0).to(pre.dtype)  # 1.0 where active, else 0.0 (a bool mask: cast each time)
        ctx.save_for_backward(pre, threshold, active)
        ctx.eps, ctx.weight = eps, weight
        return pre * active

    @staticmethod
    def backward(ctx, grad):
        pre, threshold, active = ctx.saved_tensors
        near = (pre - threshold).abs_().lt_(ctx.eps / 2)  # 1.0 near t, else 0.0, made in place
        count = near.sum(0)
        to_threshold = near.mul_(grad).sum(0) * threshold + ctx.weight * count
        return grad * active, to_threshold * (-1 / ctx.eps), None, None


def silent_aux(sae, pre: torch.Tensor, code: torch.Tensor, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """JumpReLU's AuxK: for each input, the k_aux largest pre-activations (ReLU'd) of the units that did not fire on
    it reconstruct what the live code leaves, relative to that error. A unit whose pre-activations stay under its
    threshold gets no gradient from the reconstruction; here it learns the features the live code misses, as
    AuxK's dead units do, without waiting to count as dead. Only the (b, k_aux) picked units take part: their atoms
    summed by embedding_bag, not a (b, latent) code through the decoder."""
    k = min(sae.config.k_aux or sae.sparsity.k_aux(sae), pre.shape[1])
    with torch.no_grad():
        top = (pre - code).topk(k, dim=1, sorted=False)  # the units that fired at 0
    values = pre.gather(1, top.indices) * (top.values > 0)                    # (b, k); 0 where below 0 or fired
    atoms = sae.decoder[0].weight.t().contiguous()                           # (latent, d)
    fit = F.embedding_bag(top.indices, atoms, per_sample_weights=values.to(atoms.dtype), mode="sum")  # bf16 too
    return _error_left(sae, out, fit, x)


class JumpReLU(Sparsity):
    """`threshold` is a parameter (latent,), trained as itself and projected to >= 0 after each step.

    Its own AuxK (`silent_aux`, weight `jumprelu_aux`): the L0 penalty raises the thresholds of units still learning a
    weak or rare feature above what that feature gives them, and a unit under its threshold learns only through the
    threshold's kernel: it fires once in thousands of inputs, never long enough silent to count as dead, and the
    feature goes unlearned. Fitting the live code's error with the few largest silent pre-activations of each input
    gives those units the gradient (on the hard dictionary 86.3% of the atoms matched without it, 96.1% with it, over
    three seeds: docs/sae.md, "A hard dictionary")."""

    def threshold(self, config):
        return nn.Parameter(torch.full((config.latent,), config.threshold))

    def code(self, sae, pre, batch):
        # the L0 penalty's weight on each input's count, as `terms` adds it to the loss (its mean over the batch)
        weight = sae.config.l0_coefficient / math.prod(sae.config.in_shape) / len(pre)
        return _JumpReLU.apply(pre, sae.threshold, sae.config.bandwidth, weight)

    def k_aux(self, sae) -> int:
        """Silent units AuxK uses per input under k_aux 0: a sparse fit, as BatchTopK's k / 2 (docs/sae.md)."""
        return 3

    def terms(self, sae, pre, code, out, x, centred):
        # L0, its gradient to the thresholds given by the code's backward (_JumpReLU)
        penalty = torch.count_nonzero(code.detach()).float() / len(code)
        terms, loss = {"l0_penalty": penalty}, sae.config.l0_coefficient / math.prod(sae.config.in_shape) * penalty
        if sae.config.jumprelu_aux:
            aux = silent_aux(sae, pre, code, out, x)
            terms["aux"], loss = aux, loss + sae.config.jumprelu_aux * aux
        return terms, loss

    def after_step(self, sae, seen):
        # projected here, so every saved state (and a resumed run) has thresholds >= 0 (not clamped in the graph,
        # which would stop the gradient of a threshold at 0 for good)
        sae.threshold.data.clamp_(min=0)

    def older_layout(self, like, prefix):
        """A JumpReLU that trained log_threshold (latent,) beside a scalar threshold."""
        return {**like, prefix + "log_threshold": like[prefix + "threshold"], prefix + "threshold": torch.zeros(())}

    def upgrade(self, state_dict, prefix):
        # saved when it trained log(threshold): its threshold is exp of that (the scalar buffer it also saved was
        # unused)
        if prefix + "log_threshold" in state_dict:
            state_dict[prefix + "threshold"] = state_dict.pop(prefix + "log_threshold").exp()

    def unit_thresholds(self, sae):
        return sae.threshold.detach()


# -- L1 ---------------------------------------------------------------------------------------------------------------

class L1(Sparsity):
    """Warmed up over `l1_warmup` of the run's steps, counted in the model's l1_warmup_steps buffer."""

    centre = "zero"  # as SAELens starts it: from the median, the same l1 gives a higher L0, recovers fewer features

    def terms(self, sae, pre, code, out, x, centred):
        # the code is ReLU'd (|f| = f): a matrix-vector product, the same penalty without a (batch, latent) product,
        # whose backward is slower still (a sixth of the step)
        l1 = (code.float() @ sae.decoder[0].weight.norm(dim=0)).sum() / len(x)
        warm = ((sae.steps_done + 1).float() / sae.l1_warmup_steps.clamp_min(1)).clamp(max=1)
        return {"l1": l1}, sae.config.l1 / math.prod(sae.config.in_shape) * warm * l1

    def initialise(self, sae, steps):
        sae.l1_warmup_steps.fill_(round(sae.config.l1_warmup * steps))  # a resumed run keeps its own plan


SPARSITIES: dict[str, type[Sparsity]] = {"topk": TopK, "batchtopk": BatchTopK, "jumprelu": JumpReLU, "l1": L1}


def register_sparsity(name: str, cls: type[Sparsity]) -> type[Sparsity]:
    """Add a sparsity under `name`: `--set sparsity=NAME` then trains, saves, loads and encodes with it. Call it from
    a module named in AELAB_PLUGINS so that every `aelab` process has it."""
    return register_in(SPARSITIES, name, cls, Sparsity, "sparsity", "aelab.models.sparsities.Sparsity")
