"""A trained run's activations at one layer, as training data for a sparse autoencoder:

    ACTS.npy        (n, width) float32 or float16, written through a memory map one batch at a time
    ACTS.index.npy  (n,) int64: the row of each activation in its source data set's split
    ACTS.json       where they came from: the source run, its data and split, the layer

An SAE trained with `--data ACTS.npy` finds ACTS.json beside its data, so its report can show the source images
that activate each unit most (`top_activating`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from aelab.errors import UserError
from aelab.storage import files

SPLITS = ("train", "test")
DTYPES = ("float32", "float16")


def sidecar_paths(acts: str | Path) -> tuple[Path, Path]:
    """(index, description) beside an activations file: ACTS.index.npy and ACTS.json."""
    acts = Path(acts)
    return acts.with_suffix(".index.npy"), acts.with_suffix(".json")


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


def write_streamed(module: torch.nn.Module, out: Path, rows: int, dtype: str, batches, forward, take) -> int:
    """Write `rows` activations of `module` to `out` (.npy) through a memory map, one batch at a time: forward(batch)
    runs the model, take(module's output, batch) gives that batch's rows (b, width) as numpy. Written to a temporary
    file first, so that `out` appears whole or not at all. Returns the width."""
    seen: list[torch.Tensor] = []
    hook = module.register_forward_hook(lambda m, args, output: seen.append(output))
    tmp = out.with_name(f".{out.name}.{os.getpid()}{files.TMP_SUFFIX}")
    try:
        acts, start = None, 0
        for batch in batches:
            forward(batch)
            taken = take(seen.pop(), batch)
            if acts is None:
                acts = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(rows, taken.shape[1]))
            acts[start:start + len(taken)] = taken
            start += len(taken)
        width = acts.shape[1]
        acts.flush()
        del acts
        os.replace(tmp, out)
    except OSError as e:
        raise files.write_error(e, out) from None
    finally:
        hook.remove()
        tmp.unlink(missing_ok=True)
    return width


@torch.no_grad()
def write_activations(run: str | Path, layer: str, out: str | Path, data: str | None = None, split: str = "train",
                      dtype: str = "float32", batch_size: int = 1000, overwrite: bool = False) -> dict:
    """Write the activations of `layer` of the run's model over a split of `data` (default: the run's own data) to
    `out` (.npy) and its sidecars; never more than one batch in memory. Returns the description written."""
    from aelab.data.load import DataConfig
    from aelab.storage.runfolder import RunFolder, load_model

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

    width = write_streamed(module, out, len(inputs), dtype, inputs.batches(batch_size), lambda x: _forward(model, x),
                           lambda output, x: output.flatten(1).numpy())
    with files.atomic(index_path) as f:
        np.save(f, np.arange(len(inputs), dtype=np.int64))
    described = {"run": str(Path(run).resolve()), "layer": layer, "data": source.path, "grey": source.grey,
                 "test_fraction": source.test_fraction, "kind": source.kind, "split": split,
                 "rows": len(inputs), "width": int(width), "dtype": dtype}
    files.write_text(json_path, json.dumps(described, indent=2) + "\n")
    return described


def description(acts: str | Path) -> dict | None:
    """ACTS.json beside an activations file, if there is one (None otherwise)."""
    path = sidecar_paths(acts)[1]
    if not path.is_file():
        return None
    try:
        described = json.loads(path.read_text())
        if not isinstance(described, dict) or not {"layer", "rows"} <= described.keys():
            raise ValueError("not a description of activations")
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is damaged ({e}); write the activations again with `aelab activations`") from None
    return described


def source_images(described: dict):
    """The split of the data set the activations were taken from (an ImageSet), or None for vectors and text."""
    from aelab.data.load import DataConfig

    if "split" not in described:  # a transformer's, over text (aelab.data.text)
        return None
    config = DataConfig(described.get("data"), described.get("grey", True), described.get("test_fraction", 0.1),
                        described.get("kind", "auto"))
    inputs = dict(zip(SPLITS, config.load()))[described["split"]]
    return inputs if inputs.recon_loss == "bce" else None


@torch.no_grad()
def top_activating(model, acts: str | Path, units: int = 16, per_unit: int = 8, batch_size: int = 4096
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first `units` code units of an SAE that fire anywhere in `acts` (the first units whatever they do, where
    fewer fire), the rows of `acts` that activate each most, and those activations:
    (units,) and two (units, per_unit) arrays, strongest first. One pass over the file, a batch at a time (a larger
    dictionary leaves many units that never fire, which would show nothing)."""
    from aelab.data.readers import open_npy

    data = open_npy(Path(acts))
    kept = model.code_size  # the units still in the running: those past the `units`-th that has fired never are
    best_values = torch.full((kept, 0), -torch.inf)
    best_rows = torch.zeros((kept, 0), dtype=torch.long)
    for start in range(0, len(data), batch_size):
        x = torch.from_numpy(np.array(data[start:start + batch_size], dtype=np.float32))
        codes = torch.as_tensor(model.encode(x))[:, :kept].T.cpu()                # (kept, b)
        values = torch.cat([best_values, codes], 1)
        rows = torch.cat([best_rows, torch.arange(start, start + len(x)).expand(kept, -1)], 1)
        top = values.topk(min(per_unit, values.shape[1]), dim=1)
        fired = (top.values[:, 0] > 0).nonzero().squeeze(1)
        kept = int(fired[units - 1]) + 1 if len(fired) >= units else kept
        best_values, best_rows = top.values[:kept], rows.gather(1, top.indices)[:kept]
    fired = best_values[:, 0] > 0
    shown = torch.cat([fired.nonzero(), (~fired).nonzero()]).squeeze(1)[:units].sort().values
    return shown.numpy(), best_rows[shown].numpy(), best_values[shown].numpy()
