"""FSQ: codes on exactly the grid of its levels (odd and even), each implicit code numbered once, the gradient straight
through the rounding, no codebook and no commitment loss, sampling codes that decode as reconstructions; bad levels
refused in one line; its measures through its command on a slice of the real Fashion-MNIST."""

from __future__ import annotations

import math

import pytest
import torch

from support.models import eval_json, refusal, tiny, train_in_process

LEVELS = (8, 5, 3, 2)


def fsq(arch="mlp"):
    return tiny("fsq", arch, **{"model.levels": ",".join(map(str, LEVELS))})[1]


def test_codes_take_exactly_the_levels_grid():
    model = fsq()
    z = torch.linspace(-8, 8, 4001)[:, None].expand(-1, 4)  # every dimension swept over a wide range
    q = model.quantise(z)
    for i, levels in enumerate(LEVELS):
        grid = (torch.arange(levels) - levels // 2) / (levels // 2)
        assert torch.equal(q[:, i].unique(), grid), (levels, q[:, i].unique())
    assert q.abs().max() <= 1


def test_every_implicit_code_has_one_number():
    model = fsq()
    grids = torch.meshgrid(*[torch.arange(n) - n // 2 for n in LEVELS], indexing="ij")
    points = torch.stack([g.flatten() for g in grids], 1).float()  # every grid point, as rounded integers
    levels = torch.tensor(LEVELS, dtype=torch.float32)
    half, offset = (levels - 1) * (1 + 1e-3) / 2, (1 - levels % 2) / 2
    z = torch.atanh((points + offset) / half) - torch.atanh(offset / half)  # codes that bound and round to them
    assert torch.equal(model.rounded(z), points)
    assert torch.equal(model.indices(z).sort().values, torch.arange(math.prod(LEVELS)))


def test_gradient_passes_the_rounding_straight_through():
    model = fsq()
    z = torch.randn(16, 4, requires_grad=True)
    model.quantise(z).sum().backward()
    assert (z.grad > 0).all()  # the tanh's slope: the rounding's zero gradient skipped
    assert model.state_dict().keys() == {k for k, _ in model.named_parameters()}  # nothing learnt but weights
    assert model.loss(torch.rand(2, 1, 28, 28)).keys() == {"loss"}


def test_sampling_codes_decode_as_the_reconstruction(fashion_slice):
    model = fsq("conv").eval()
    x = fashion_slice[1].floats(slice(0, 6))
    codes = model.sampling_codes(x)
    assert codes.shape == (6, model.code_size) == (6, 4 * 49) and codes.dtype == torch.float32
    assert torch.equal(model.decode_sampled(codes), model.reconstruct(x))


@pytest.mark.parametrize("settings,words", [({"levels": "8,1,5,5"}, "levels >= 2"), ({"levels": "8,5"}, "latent 4")])
def test_fsq_refuses_bad_levels_in_one_line(settings, words):
    assert words in refusal("fsq", settings)


def test_fsq_cli_reports_the_use_of_its_implicit_codebook(tmp_path, slice_npz, capsys):
    run = train_in_process(tmp_path, slice_npz, "fsq", "--epochs", "1", "--batch-size", "128", "--set",
                           "channels=8,16", "--set", "levels=5,3", "--latent", "2")
    metrics = eval_json(run, capsys)
    assert 0 < metrics["usage"] <= 1 and 1 <= metrics["perplexity"] <= 15 and metrics["code_bits"] == 49 * math.log2(15)


def test_normalised_code_keeps_using_the_codebook(fashion_slice):
    # unnormalised, this run drove its code out to where tanh is flat: 5% of the 1000 codes used, against 25% here
    from support.models import stepper

    train, test = fashion_slice
    model = tiny("fsq", "conv", **{"model.levels": "8,5,5,5"})[1]
    trainer = stepper(model, lr=1e-2)
    for _ in range(12):
        for i in range(0, 1024, 128):
            trainer.step(train.floats(slice(i, i + 128)))
    model.eval()
    with torch.no_grad():
        used = torch.bincount(model.indices(model.encoder(test.floats(slice(0, 256)))), minlength=1000).gt(0)
    assert used.float().mean() > 0.15


def test_a_run_saved_before_the_normalisation_codes_as_it_did(fashion_slice):
    model = fsq("conv").eval()
    older = model.older_layout(model.state_dict())
    assert set(model.state_dict()) - set(older) == {f"encoder.{len(model.encoder) - 1}.{k}" for k in
                                                   ("running_mean", "running_var", "num_batches_tracked")}
    loaded = fsq("conv")
    loaded.load_state_dict({k: v + 0.01 for k, v in older.items()})  # weights that are not loaded's own
    x = fashion_slice[1].floats(slice(0, 6))
    with torch.no_grad():
        before = model.quantise(loaded.encoder[:-1](x))  # the unnormalised code of the loaded weights
    assert torch.equal(loaded.eval().code(x), before)
