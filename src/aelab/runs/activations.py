"""Writing a trained run's activations at one layer (aelab.data.activations describes the files and reads them back):
the run's model over a split of its data, one batch at a time."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from aelab.data.activations import DTYPES, SPLITS, sidecar_paths
from aelab.data.load import DataConfig
from aelab.errors import UserError
from aelab.runs.runfolder import RunFolder, load_model
from aelab.storage import files


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
    """Run x through the encoder and the decoder, as evaluation does: every layer sees it."""
    model.evaluation(x)


@torch.no_grad()
def write_activations(run: str | Path, layer: str, out: str | Path, data: str | None = None, split: str = "train",
                      dtype: str = "float32", batch_size: int = 1000, overwrite: bool = False) -> dict:
    """Write the activations of `layer` of the run's model over a split of `data` (default: the run's own data) to
    `out` (.npy) and its sidecars; never more than one batch in memory. Returns the description written."""
    out = Path(out)
    if out.suffix != ".npy":
        raise UserError(f"activations are written as a .npy file; give --out FILE.npy, not {out}")
    if split not in SPLITS or dtype not in DTYPES:
        raise UserError(f"--split takes {' or '.join(SPLITS)} and --dtype {' or '.join(DTYPES)}")
    index_path, json_path = sidecar_paths(out)
    taken = [p for p in (out, index_path, json_path) if p.exists()]
    if taken and not overwrite:
        raise UserError(f"{taken[0]} already exists; choose another --out or pass --overwrite")
    model = load_model(run, "cpu")
    module = _layer(model, layer)
    source = RunFolder.open(run).config().data
    path = data if data is not None else source.path  # absolute: the SAE's report finds the images from anywhere
    source = DataConfig(path and str(Path(path).resolve()), source.grey, source.test_fraction, source.kind)
    inputs = dict(zip(SPLITS, source.load()))[split]
    if tuple(inputs.shape) != tuple(model.config.in_shape):
        raise UserError(f"the data are {'x'.join(map(str, inputs.shape))} but {run} takes "
                        f"{'x'.join(map(str, model.config.in_shape))}; give --data of that size")

    seen: list[torch.Tensor] = []
    hook = module.register_forward_hook(lambda m, args, output: seen.append(output.flatten(1)))
    tmp = out.with_name(f".{out.name}.{os.getpid()}{files.TMP_SUFFIX}")
    try:
        _forward(model, inputs.floats(slice(0, 1)))
        width = seen.pop().shape[1]
        acts = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(len(inputs), width))
        start = 0
        for x in inputs.batches(batch_size):
            _forward(model, x)
            acts[start:start + len(x)] = seen.pop().numpy()
            start += len(x)
        acts.flush()
        del acts
        os.replace(tmp, out)
    except OSError as e:
        raise files.write_error(e, out) from None
    finally:
        hook.remove()
        tmp.unlink(missing_ok=True)
    with files.atomic(index_path) as f:
        np.save(f, np.arange(len(inputs), dtype=np.int64))
    described = {"run": str(Path(run).resolve()), "layer": layer, "data": source.path, "grey": source.grey,
                 "test_fraction": source.test_fraction, "kind": source.kind, "split": split,
                 "rows": len(inputs), "width": int(width), "dtype": dtype}
    files.write_text(json_path, json.dumps(described, indent=2) + "\n")
    return described
