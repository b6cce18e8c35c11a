"""A sparse autoencoder's training step with this checkout's sparsity against another revision's, in one process:
alternated steps on the same batches, medians. The other revision's models/sparsities.py is loaded beside this one
(`git show REV:...`), its sparsity registered under another name, so both models share everything else.

    python benchmarks/sae_step.py --sparsity jumprelu --against main [--set KEY=VALUE ...]

The step is the trainer's whole one (forward, loss, backward, clipped Adam) of a 64-d SAE with 512 units at batch 512
(the hard dictionary's size in docs/sae.md), on vectors made from 256 planted atoms, 6 active on average; one thread.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

import torch  # noqa: E402

from aelab.models import sparsities  # noqa: E402
from support.models import stepper, vector_sae  # noqa: E402


def other_sparsity(revision: str, name: str) -> str:
    """Register `name` as the other revision has it (its sparsities.py loaded as a module of its own); its new name."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{revision}:src/aelab/models/sparsities.py"],
                            check=True, capture_output=True, text=True).stdout
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location("other_sparsities", f.name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    Path(f.name).unlink()
    cls = module.SPARSITIES[name]  # a subclass of the other module's Sparsity: the same hooks on this one's
    sparsities.register_sparsity(f"{name}_other", type(cls.__name__, (sparsities.Sparsity,), {
        key: value for klass in reversed(cls.__mro__[:-2]) for key, value in vars(klass).items()
        if not key.startswith("__")}))
    return f"{name}_other"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsity", default="jumprelu", choices=sparsities.SPARSITIES)
    parser.add_argument("--against", default="main", help="the git revision to compare with (default main)")
    parser.add_argument("--steps", type=int, default=300, help="steps of each (the first tenth not counted)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a model setting, both")
    args = parser.parse_args()
    torch.set_num_threads(1)
    settings = {"latent": 512, "k": 6, "l0_coefficient": 0.5, **dict(kv.split("=", 1) for kv in args.set)}
    torch.manual_seed(1)
    atoms = torch.nn.functional.normalize(torch.randn(256, 64), dim=1)
    batches = (((torch.rand(512 * 40, 256) < 6 / 256) * torch.rand(512 * 40, 256) * 2) @ atoms).split(512)
    runs = {}
    for label, name in (("this", args.sparsity), (args.against, other_sparsity(args.against, args.sparsity))):
        model = vector_sae(d=64, sparsity=name, **settings).train()
        runs[label] = (model, stepper(model, 2e-3))
    times = {label: [] for label in runs}
    for step in range(args.steps):
        for label in list(runs)[:: 1 if step % 2 else -1]:  # which goes first alternates
            model, trainer = runs[label]
            start = time.perf_counter()
            trainer.step(batches[step % len(batches)])
            times[label].append(time.perf_counter() - start)
    median = {label: sorted(t[args.steps // 10:])[len(t[args.steps // 10:]) // 2] * 1e3 for label, t in times.items()}
    print(json.dumps({"sparsity": args.sparsity, "settings": settings,
                      **{f"{k}_ms": round(v, 3) for k, v in median.items()},
                      "this_over_other": round(median["this"] / median[args.against], 3)}))


if __name__ == "__main__":
    main()
