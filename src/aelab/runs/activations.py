"""Writing a trained run's activations at one layer (aelab.data.activations describes the files and reads them back):
the run's model over a split of its data, one batch at a time."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from aelab.data.activations import DTYPES, SPLITS, write_streamed
from aelab.data.load import DataConfig
from aelab.errors import UserError
from aelab.runs.runfolder import RunFolder, load_model
from aelab.storage import files
from aelab.storage.folders import ActivationFiles


def layers(model) -> dict[str, torch.nn.Module]:
    """The model's layers by name ("encoder.6"): every module without children."""
    return {name: m for name, m in model.named_modules() if name and not any(m.children())}


def _layer(model, name: str) -> torch.nn.Module:
    found = layers(model)
    if name not in found:
        listed = ", ".join(f"{n} ({type(m).__name__})" for n, m in found.items())
        raise UserError(f"the model has no layer {name!r}; give --layer one of: {listed}")
    return found[name]


def _forward(model, x: torch.Tensor) -> None:
    """Run x through the encoder and the decoder, as evaluation does."""
    model.evaluation(x)


def _run_layers(model, x: torch.Tensor) -> list[str]:
    """The layers a forward pass of x calls as modules (an SAE computes its code from the weights directly)."""
    called = []
    hooks = [m.register_forward_hook(lambda m, a, o, name=name: called.append(name)) for name, m in layers(model).items()]
    try:
        _forward(model, x)
    finally:
        for hook in hooks:
            hook.remove()
    return list(dict.fromkeys(called))


@torch.no_grad()
def write_activations(run: str | Path, layer: str, out: str | Path, data: str | None = None, split: str = "train",
                      dtype: str = "float32", batch_size: int = 1000, overwrite: bool = False) -> dict:
    """Write the activations of `layer` of the run's model over a split of `data` (default: the run's own data) to
    `out` (.npy) and its sidecars; never more than one batch in memory. Returns the description written."""
    owner = ActivationFiles(out)
    out, index_path, json_path = owner.path, owner.index_path, owner.marker_path
    if split not in SPLITS or dtype not in DTYPES:
        raise UserError(f"--split takes {' or '.join(SPLITS)} and --dtype {' or '.join(DTYPES)}")
    owner.claim(overwrite)
    model = load_model(run, "cpu")
    module = _layer(model, layer)
    source = RunFolder.open(run).config().data
    path = data if data is not None else source.path  # absolute: the SAE's report finds the images from anywhere
    source = DataConfig(path and str(Path(path).resolve()), source.grey, source.test_fraction, source.kind)
    inputs = dict(zip(SPLITS, source.load()))[split]
    if tuple(inputs.shape) != model.in_shape:
        raise UserError(f"the data are {'x'.join(map(str, inputs.shape))} but {run} takes "
                        f"{'x'.join(map(str, model.in_shape))}; give --data of that size")

    first = inputs.floats(slice(0, 1))
    called = _run_layers(model, first)
    if layer not in called:
        raise UserError(f"layer {layer!r} is not called in {run}'s forward pass (its weights are used directly), so "
                        f"it has no activations; give --layer one of: {', '.join(called)}")
    owner.begin(overwrite)  # the description's file before the activations: it marks the set as aelab's
    width = write_streamed(module, out, len(inputs), dtype, inputs.batches(batch_size), lambda x: _forward(model, x),
                           lambda output, x: output.flatten(1).numpy())
    with files.atomic(index_path) as f:
        np.save(f, np.arange(len(inputs), dtype=np.int64))
    described = {"run": str(Path(run).resolve()), "layer": layer, "data": source.path, "grey": source.grey,
                 "test_fraction": source.test_fraction, "kind": source.kind, "split": split,
                 "rows": len(inputs), "width": int(width), "dtype": dtype}
    files.write_text(json_path, json.dumps(described, indent=2) + "\n")
    return described
