"""Each sparsity of the SAE (models.sparsities): the gathered TopK step equals the dense one, AuxK on the dead units,
BatchTopK's threshold and ranking, JumpReLU's thresholds, AuxK and older saved layout, L1's weighting and warm-up."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from aelab.models.sparsities import _largest, aux_loss
from aelab.runs.runfolder import load_model
from support.models import stepper, vector_sae
from support.process import aelab


@pytest.mark.parametrize("dead", [False, True])
@pytest.mark.parametrize("sparsity", ["topk", "batchtopk"])
def test_the_gathered_step_has_the_dense_codes_loss_and_gradients(sparsity, dead):
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(2))
    found = []
    for gathered in (True, False):
        model = vector_sae(sparsity=sparsity, dead_window=8)
        if dead:
            model.inputs_since_active[::3] = 8  # every third unit dead: AuxK on those alone, gathered too
        assert model.gathers()  # TopK and BatchTopK training on a one-layer encoder: gathered
        if not gathered:
            model.gathers = lambda: False
        terms = model.loss(x)
        terms["loss"].backward()
        found.append((terms, {name: p.grad for name, p in model.named_parameters()}))
    (terms, grads), (dense_terms, dense_grads) = found
    assert terms.keys() == dense_terms.keys() and (terms["aux"] > 0) == dead
    for name in terms:
        assert torch.allclose(terms[name], dense_terms[name], atol=1e-6), name
    for name in grads:
        assert grads[name].abs().sum() > 0 and torch.allclose(grads[name], dense_grads[name], atol=1e-6), name
    assert not vector_sae(sparsity=sparsity, aux_coefficient=0.0).eval().gathers()  # inference codes densely


def test_auxk_on_the_dead_units_alone_is_auxk_over_every_unit_with_the_live_ones_masked():
    """The CPU's AuxK (dead units alone) against the form a GPU computes: every unit, live ones at -inf."""
    model = vector_sae(sparsity="topk", dead_window=8)
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(3))
    for dead_every in (5, 13):  # 13 dead units, more than k_aux (d / 2 = 8), then 5, fewer
        model.inputs_since_active.zero_()
        model.inputs_since_active[::dead_every] = 8
        pre = model.pre_activations(x)
        out = model.decoder(model.sparse_code(pre, batch=True))
        top = pre.masked_fill(~model.dead(), -torch.inf).topk(8, dim=1)
        z_aux = torch.zeros_like(pre).scatter_(1, top.indices, torch.relu(top.values).nan_to_num(0, 0, 0))
        live = out.detach()
        want = model.recon_error(live + F.linear(z_aux, model.decoder[0].weight), x) / model.recon_error(live, x)
        assert torch.allclose(aux_loss(model, pre, out, x), want, atol=1e-6)


@pytest.mark.parametrize("sparsity", ["topk", "batchtopk"])
def test_auxk_revives_a_unit_that_plain_topk_leaves_dead(sparsity):
    def fired_after_training(aux: float) -> int:
        model = vector_sae(latent=16, k=2, dead_window=1, aux_coefficient=aux, sparsity=sparsity)
        with torch.no_grad():  # unit 0's pre-activations far below the others': it never makes the top k
            model.encoder[-1].weight[0] *= 0.01
        x = torch.randn(256, 16, generator=torch.Generator().manual_seed(1))
        trainer = stepper(model, lr=1e-2)
        for _ in range(60):
            trainer.step(x)
        return int((model.code(x)[:, 0] > 0).sum())

    assert fired_after_training(0.0) == 0
    assert fired_after_training(1 / 32) > 5


def test_batchtopk_inference_is_per_input_with_its_saved_threshold(tmp_path):
    model = vector_sae(sparsity="batchtopk", k=4)
    assert model.threshold < 0  # not estimated yet
    trainer = stepper(model, lr=1e-2)
    x = torch.randn(128, 16)
    for _ in range(20):
        trainer.step(x)
    model.train()
    assert not torch.equal(model.code(x[:1]), model.code(x)[:1])  # training: the batch decides
    model.eval()
    alone, together = model.code(x[:1]), model.code(x)[:1]
    assert model.threshold > 0 and alone.any() and torch.equal(alone > 0, together > 0)
    assert torch.allclose(alone, together, atol=1e-6)  # a one-row matrix product rounds apart from a batch's
    from safetensors.torch import load_file, save_file
    save_file(model.state_dict(), tmp_path / "m.safetensors")
    again = vector_sae(sparsity="batchtopk", k=4)
    again.load_state_dict(load_file(tmp_path / "m.safetensors"))
    assert again.threshold == model.threshold and torch.equal(again.eval().code(x[:1]), alone)


def test_batchtopk_ranks_each_unit_by_its_pre_activation_times_its_atom_norm():
    """As SAELens's rescale_acts_by_decoder_norm: the size of what a unit adds to the reconstruction, in training
    (dense and gathered codes), in the running threshold and at inference."""
    model = vector_sae(sparsity="batchtopk", k=2)
    with torch.no_grad():  # free atoms of different lengths
        model.decoder[0].weight.mul_(torch.linspace(0.1, 5, 64))
    x = torch.randn(32, 16, generator=torch.Generator().manual_seed(3))
    pre = model.pre_activations(x).detach()
    ranked = pre * model.decoder[0].weight.detach().norm(dim=0)
    want = torch.relu(pre) * (ranked >= ranked.flatten().topk(64).values[-1])
    by_pre = torch.relu(pre) * (pre >= pre.flatten().topk(64).values[-1])
    assert not torch.equal(want > 0, by_pre > 0)  # the norms change which units are kept
    assert torch.equal(model.code(x), want)  # training, dense
    assert model.gathers() and torch.allclose(model.loss(x)["recon"], model.recon_error(model.decoder(want), x))
    stepper(model, lr=1e-3).step(x)  # the running threshold starts at the smallest kept product
    assert torch.allclose(model.threshold, ranked[want > 0].min())
    model.eval()
    pre = model.pre_activations(x).detach()
    kept = pre * model.decoder[0].weight.detach().norm(dim=0) > model.threshold
    assert torch.allclose(model.code(x), pre * kept) and 0 < kept.sum() < kept.numel()


def test_jumprelu_thresholds_move_and_the_l0_penalty_cuts_l0():
    def trained(l0_coefficient: float):
        model = vector_sae(sparsity="jumprelu", threshold=0.1, bandwidth=0.5, l0_coefficient=l0_coefficient)
        start = model.threshold.detach().clone()
        x = torch.randn(256, 16, generator=torch.Generator().manual_seed(1))
        trainer = stepper(model, lr=1e-2)
        for _ in range(40):
            terms = trainer.step(x)
        return model, start, terms

    model, start, terms = trained(8.0)
    assert isinstance(model.threshold, torch.nn.Parameter)  # the threshold itself is trained, not its log
    assert (model.threshold.detach() - start).abs().max() > 0.05  # learned, by the straight-through estimate
    free, _, free_terms = trained(0.0)
    assert terms["l0"] < free_terms["l0"]
    # without the penalty the thresholds fall; each step projects them back to >= 0, and some sit there
    assert free.threshold.min() == 0 and free.threshold.mean() < start.mean()


def test_jumprelu_auxk_and_the_threshold_gradients_by_hand():
    """By hand on 6 inputs, 24 units: JumpReLU's AuxK lets the k_aux largest positive pre-activations of the units
    that did not fire on an input fit the live code's error (relative to it), and only those units' rows learn from
    it; the thresholds' gradient is the straight-through estimate of the reconstruction's and of the L0 penalty's,
    -(1 / eps) sum over inputs near t of (t dL/dz + l0_coefficient / (d b)) (Rajamanoharan et al. 2024, eq. 11)."""
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(3))
    settings = dict(sparsity="jumprelu", d=4, latent=24, threshold=0.5, bandwidth=0.2, l0_coefficient=3.0,
                    atom_norm=1.0)
    model = vector_sae(k_aux=2, **settings)
    pre = model.pre_activations(x).detach()
    fired = pre > model.threshold.detach()
    assert fired.any(1).all() and (~fired & (pre > 0)).sum(1).min() >= 2  # each input: fired and silent units
    terms = model.loss(x)
    code = pre * fired
    out = model.decoder(code)
    z_aux = torch.zeros_like(pre)
    for row in range(len(x)):  # the 2 largest silent pre-activations of each input, ReLU'd
        silent = pre[row].masked_fill(fired[row], -torch.inf)
        top = silent.topk(2).indices
        z_aux[row, top] = silent[top].clamp_min(0)
    fit = z_aux @ model.decoder[0].weight.T
    want = F.mse_loss(out + fit, x) / F.mse_loss(out, x)
    assert torch.allclose(terms["aux"], want) and torch.allclose(terms["l0_penalty"], fired.sum(1).float().mean())
    terms["aux"].backward()
    rows = model.encoder[-1].weight.grad.abs().sum(1) > 0
    assert torch.equal(rows, (z_aux > 0).any(0)) and not rows.all()  # the picked silent units alone
    assert model.threshold.grad is None or not model.threshold.grad.any()

    model = vector_sae(jumprelu_aux=0.0, **settings)
    code = code.requires_grad_()
    dl_dz = torch.autograd.grad(model.recon_error(model.decoder(code), x), code)[0]
    t, eps = model.threshold.detach(), 0.2
    near = ((pre - t).abs() < eps / 2).float()
    want = -(near * (t * dl_dz + 3.0 / (4 * len(x)))).sum(0) / eps
    model.loss(x)["loss"].backward()
    assert torch.allclose(model.threshold.grad, want, atol=1e-7) and want.abs().max() > 0


OLD_JUMPRELU = Path(__file__).parent / "data" / "jumprelu-log-threshold"


def test_a_jumprelu_run_saved_with_log_threshold_loads_evaluates_and_resumes(tmp_path, monkeypatch):
    """A run folder written when JumpReLU trained log(threshold) (`aelab train sae --set sparsity=jumprelu`, 12
    units on 600 planted 8-d vectors, 1 epoch; its data beside it): its threshold is exp of the saved log."""
    shutil.copytree(OLD_JUMPRELU, tmp_path, dirs_exist_ok=True)
    monkeypatch.chdir(tmp_path)  # the run's data.path, v.npy, is relative
    from safetensors.torch import load_file
    saved = load_file("run/model.safetensors")
    assert saved["log_threshold"].shape == (12,) and saved["threshold"].shape == ()  # the old layout
    model = load_model("run", "cpu")
    assert torch.equal(model.threshold.detach(), saved["log_threshold"].exp())
    x = torch.from_numpy(np.load("v.npy")[:100])
    pre = model.pre_activations((x - model.in_mean) / model.in_std)
    assert torch.equal(model.encode(x), (pre * (pre > saved["log_threshold"].exp())).detach())
    old = json.loads(Path("run/eval.json").read_text())  # what the old code measured on its test split
    assert aelab("eval", "run").returncode == 0
    again = json.loads(Path("run/eval.json").read_text())
    assert again["l0"] == old["l0"] and abs(again["fvu"] - old["fvu"]) < 1e-6, (again, old)
    result = aelab("train", "--resume", "run", "--epochs", 2, "--threads", 1)
    assert result.returncode == 0, result.stderr[-2000:]
    resumed = load_file("run/model.safetensors")  # written in the new layout, the threshold trained on
    assert "log_threshold" not in resumed and resumed["threshold"].shape == (12,)
    moved = resumed["threshold"] - saved["log_threshold"].exp()
    assert moved.abs().max() > 1e-3 and (resumed["threshold"] >= 0).all()
    records = [json.loads(line) for line in Path("run/metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and "train_aux" not in records[1]  # no AuxK: saved before it


def test_the_l1_penalty_is_weighted_by_decoder_norms_and_warmed_up():
    model = vector_sae(sparsity="l1", l1=2.0, l1_warmup=0.5)
    x = torch.randn(32, 16)
    with torch.no_grad():  # atom 0 three times longer, its unit a third: the same reconstruction and penalty
        before = model.loss(x)
        model.decoder[0].weight[:, 0] *= 3
        model.encoder[-1].weight[0] /= 3
        model.encoder[-1].bias[0] /= 3
    after = model.loss(x)
    z = model.code(x)
    assert torch.allclose(after["l1"], (z * model.decoder[0].weight.norm(dim=0)).sum(1).mean())
    assert torch.allclose(after["l1"], before["l1"], rtol=1e-5) and torch.allclose(after["recon"], before["recon"])
    model.initialise(x, steps=10)  # warm-up over 5 steps: the first step's weight is 1/5
    first = model.loss(x)
    assert torch.allclose(first["loss"], first["recon"] + 2.0 / 16 * first["l1"] / 5)
    model.steps_done.fill_(7)
    late = model.loss(x)
    assert torch.allclose(late["loss"], late["recon"] + 2.0 / 16 * late["l1"])


@pytest.mark.parametrize("below", [0.0, 0.5, 1.5, 3.0])  # no guess, enough above it, too few (topk of all)
def test_batchtopk_picks_the_largest_whatever_its_guess(below):
    values = torch.relu(torch.randn(64 * 96, generator=torch.Generator().manual_seed(0)))
    picked = _largest(values, 8 * 64, torch.tensor(below))
    assert torch.equal(picked, values.topk(8 * 64).indices.sort().values)
