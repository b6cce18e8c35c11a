"""Tiny models for fast tests: every registered model on both architectures as pytest params, a small build of one,
and a trainer to take steps by hand."""

from __future__ import annotations

import pytest

TINY = {"model.latent": 4, "model.hidden": "32,16", "model.channels": "4,8"}


def arch_cases(models) -> list:
    """(name, arch) for every registered model on both architectures, as pytest params; a model not built on an
    architecture (a VQ-VAE quantises a grid of code vectors, which the MLP has not) is skipped there, saying so."""
    return [pytest.param(name, arch, marks=() if arch in cls.archs else pytest.mark.skip(
        reason=f"{name} is built on --arch {' or '.join(cls.archs)} only, and refuses {arch} (tested apart)"))
        for name, cls in models.items() for arch in ("mlp", "conv")]


def tiny(name: str, arch: str = "mlp", **extra):
    """(config, model): a seeded small `name` (latent 4, hidden 32-16, channels 4-8) and its resolved config."""
    import torch

    from aelab.models import build
    from aelab.runs.settings import resolve

    from aelab.models import MODELS

    small_k = {"model.k": 4} if "k" in MODELS[name].Config.__dataclass_fields__ else {}  # k at most latent
    config = resolve(name, None, {**TINY, **small_k, "model.arch": arch, **extra})
    torch.manual_seed(0)
    return config, build(name, config.model)


def stepper(model, lr: float = 1e-3):
    """A CPU trainer around `model`, to take optimisation steps by hand with .step(x) (its data is never read)."""
    import torch

    from aelab.data.datasets import ImageSet
    from aelab.training.train import TrainConfig, Trainer

    empty = ImageSet(torch.zeros((0, *model.config.in_shape), dtype=torch.uint8))
    return Trainer(model, empty, empty, TrainConfig(lr=lr, device="cpu"))


def train_in_process(folder, data, name: str, *flags: str):
    """`aelab train NAME --data DATA ...` through cli.main in this process (no grids, one thread): the run folder."""
    from aelab.cli import main

    out = folder / name
    assert main(["train", name, "--data", str(data), "--out", str(out), "--grid-every", "0", "--threads", "1",
                 *flags]) == 0
    return out


def eval_json(run, capsys) -> dict:
    """`aelab eval RUN --json` through cli.main, its output parsed."""
    import json

    from aelab.cli import main

    capsys.readouterr()
    assert main(["eval", str(run), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def refusal(name: str, settings: dict) -> str:
    """The one-line message with which the settings resolver refuses `name` with these model settings."""
    import pytest

    from aelab.errors import UserError
    from aelab.runs.settings import resolve

    with pytest.raises(UserError) as e:
        resolve(name, None, settings)
    assert "\n" not in str(e.value)
    return str(e.value)


def vector_sae(seed: int = 0, d: int = 16, **settings):
    """A seeded SAE (64 units, k = 3) on d-dimensional vectors, with these model settings."""
    import torch

    from aelab.models import build
    from aelab.runs.settings import resolve

    config = resolve("sae", None, {"latent": 64, "k": 3, **settings})
    config.model.in_shape, config.model.recon_loss = (d,), "mse"
    torch.manual_seed(seed)
    return build("sae", config.model)
