"""A trained run's activations at one layer, as training data for a sparse autoencoder (aelab.runs.activations
writes them, aelab.data.text a transformer's over text, both through `write_streamed`; this module reads them back;
storage.folders.ActivationFiles says what --overwrite may replace):

    ACTS.npy        (n, width) float32 or float16, written through a memory map one batch at a time
    ACTS.index.npy  (n,) int64: the row of each activation in its source data set's split
    ACTS.json       where they came from: the source run, its data and split, the layer

An SAE trained with `--data ACTS.npy` finds ACTS.json beside its data, so its report can show the source images
that activate each unit most (`top_activating`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from aelab.errors import UserError
from aelab.storage.folders import ActivationFiles
from aelab.storage import files

SPLITS = ("train", "test")
DTYPES = ("float32", "float16")


def sidecar_paths(acts: str | Path) -> tuple[Path, Path]:
    """(index, description) beside an activations file: ACTS.index.npy and ACTS.json."""
    owner = ActivationFiles(acts)
    return owner.index_path, owner.marker_path


def write_streamed(module: torch.nn.Module, out: Path, rows: int, dtype: str, batches, forward, take) -> int:
    """Write `rows` activations of `module` to `out` (.npy) through a memory map, one batch at a time: forward(batch)
    runs the model, take(module's output, batch) gives that batch's rows (b, width) as numpy. Written through
    files.atomic, so that `out` appears whole or not at all. Returns the width."""
    seen: list[torch.Tensor] = []
    hook = module.register_forward_hook(lambda m, args, output: seen.append(output))
    try:
        with files.atomic(out):  # through a memory map of its temporary file: `out` appears whole, durably, or not
            acts, start = None, 0
            for batch in batches:
                forward(batch)
                taken = take(seen.pop(), batch)
                if acts is None:
                    acts = np.lib.format.open_memmap(files.temporary(out), mode="w+", dtype=dtype,
                                                     shape=(rows, taken.shape[1]))
                acts[start:start + len(taken)] = taken
                start += len(taken)
            width = acts.shape[1]
            acts.flush()
            del acts
    finally:
        hook.remove()
    return width


def description(acts: str | Path) -> dict | None:
    """ACTS.json beside an activations file, if there is one (None otherwise: vectors of another format, which
    `aelab activations` never writes, have none)."""
    if Path(acts).suffix != ".npy":
        return None
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
    return inputs if inputs.data_kind == "images" else None


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
