"""The chapter's model: its exact size, its Keras initialisation, its summary (tests/models/test_contract.py holds the
contract every registered model keeps)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from aelab.cli import main
from aelab.models import AEConfig, build, summary
from support.process import aelab

CHAPTER_LAYERS = [784, 256, 128, 64, 20, 64, 128, 256, 784]


def dense_params(sizes: list[int]) -> int:
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))


def test_chapter_model_has_exactly_487588_parameters():
    model = build("ae", AEConfig())
    assert model.num_parameters() == 487_588 == dense_params(CHAPTER_LAYERS)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == list(zip(CHAPTER_LAYERS[:-1], CHAPTER_LAYERS[1:]))
    # ReLU between layers, none on the code (linear) nor on the output (logits)
    encoder_kinds = [type(m).__name__ for m in model.encoder]
    assert encoder_kinds == ["Flatten", "Linear", "ReLU", "Linear", "ReLU", "Linear", "ReLU", "Linear"]
    assert type(model.decoder[-2]) is nn.Linear and type(model.decoder[-1]) is nn.Unflatten


def test_latent_and_hidden_sizes_are_configurable():
    model = build("ae", AEConfig(latent=2, hidden=(100, 50)))
    assert model.num_parameters() == dense_params([784, 100, 50, 2, 50, 100, 784])


def test_weights_are_glorot_uniform_and_biases_zero():
    torch.manual_seed(0)
    model = build("ae", AEConfig())
    for m in model.modules():
        if isinstance(m, nn.Linear):
            bound = math.sqrt(6 / (m.in_features + m.out_features))
            w = m.weight.detach()
            assert w.abs().max() <= bound
            # filled up to the bound, uniformly: PyTorch's default init (bound 1/sqrt(fan_in)) would fail here
            assert w.abs().max() > 0.95 * bound
            assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1)
            assert torch.count_nonzero(m.bias) == 0


def test_summary_lists_every_layer_and_the_total():
    text = summary(build("ae", AEConfig()))
    assert text.splitlines()[-1] == "Total params: 487,588"
    assert text.count("(Linear)") == 8
    assert "200,960" in text  # 784*256 + 256, the first layer as Keras reports it


def test_aelab_info_prints_the_summary(trained_run, capsys):
    result = aelab("info")  # a real process once; the other two through cli.main
    assert result.returncode == 0, result.stderr
    assert "Total params: 487,588" in result.stdout
    assert main(["info", "--latent", "2"]) == 0
    assert f"Total params: {dense_params([784, 256, 128, 64, 2, 64, 128, 256, 784]):,}" in capsys.readouterr().out
    assert main(["info", str(trained_run)]) == 0  # a trained run's model, rebuilt from its saved config
    assert capsys.readouterr().out == result.stdout
