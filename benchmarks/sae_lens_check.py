"""Does SAELens itself read what `aelab export --format saelens` writes, and give aelab's codes?

Trains a tiny SAE of each sparsity (topk, batchtopk, jumprelu, l1; aelab's defaults but k) on planted vectors with
aelab, exports them, then, in a virtual environment of its own with sae-lens installed (made on first use; never
aelab's), loads each with `SAE.load_from_disk` and compares its encode and decode with aelab's on the same raw
vectors.

    python benchmarks/sae_lens_check.py [--venv /tmp/aelab-saelens-venv] [--work /tmp/aelab-saelens-check]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

SRC = Path(__file__).resolve().parents[1] / "src"
TORCH_WHEELS = Path("/opt/wheels")  # a CPU torch wheel, if this machine keeps one: saves a GPU build's download

# run inside the SAELens venv: load each export and print the largest differences from aelab's answers
CHECK = """
import json, sys
import numpy as np, torch
from sae_lens import SAE
out = {}
for folder in sys.argv[1:]:
    sae = SAE.load_from_disk(folder, device="cpu")
    x = torch.from_numpy(np.load(folder + "/x.npy"))
    codes = sae.encode(x)
    out[folder] = {"architecture": sae.cfg.architecture(), "class": type(sae).__name__,
                   "codes": float((codes - torch.from_numpy(np.load(folder + "/codes.npy"))).abs().max()),
                   "recon": float((sae.decode(codes) - torch.from_numpy(np.load(folder + "/recon.npy"))).abs().max()),
                   "code_scale": float(codes.abs().max()), "l0": float((codes > 0).sum(1).float().mean())}
print(json.dumps(out))
"""


def venv_python(venv: Path) -> Path:
    python = venv / "bin" / "python"
    if not python.exists() or subprocess.run([python, "-c", "import sae_lens"], capture_output=True).returncode:
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        wheels = sorted(TORCH_WHEELS.glob("torch-*+cpu-*.whl")) if TORCH_WHEELS.is_dir() else []
        subprocess.run([python, "-m", "pip", "install", "-q", *map(str, wheels), "sae-lens"], check=True)
    return python


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=Path("/tmp/aelab-saelens-venv"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/aelab-saelens-check"))
    args = parser.parse_args()
    sys.path.insert(0, str(SRC))
    from aelab.models.sparse import SPARSITIES, planted_dictionary
    from aelab.runs.runfolder import load_model

    python = venv_python(args.venv)
    args.work.mkdir(parents=True, exist_ok=True)
    vectors = planted_dictionary(4000, d=48, atoms=128, active=4)[0] * 5 + 2  # raw units, not standardised
    np.save(args.work / "vectors.npy", vectors)
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    folders = []
    for sparsity in SPARSITIES:
        run, export = args.work / f"run-{sparsity}", args.work / f"saelens-{sparsity}"
        for command in (["train", "sae", "--data", args.work / "vectors.npy", "--epochs", "3", "--latent", "256",
                         "--set", f"sparsity={sparsity}", "--set", "k=8", "--threads", "1",
                         "--out", run, "--overwrite"],
                        ["export", run, "--format", "saelens", "--out", export, "--overwrite"]):
            subprocess.run([sys.executable, "-m", "aelab", *map(str, command)], env=env, check=True,
                           stdout=subprocess.DEVNULL)
        model = load_model(run, "cpu")
        x = vectors[:1000]
        np.save(export / "x.npy", x)
        np.save(export / "codes.npy", model.encode(x).astype(np.float32))
        np.save(export / "recon.npy", np.asarray(model.decode(model.encode(x)), dtype=np.float32))
        folders.append(str(export))
    found = json.loads(subprocess.run([python, "-c", CHECK, *folders], capture_output=True, text=True,
                                      check=True).stdout.splitlines()[-1])
    ok = True
    for folder, r in found.items():
        good = r["codes"] <= 1e-4 * max(1.0, r["code_scale"]) and r["recon"] <= 1e-3
        ok &= good
        print(f"{Path(folder).name}: SAELens {r['class']} ({r['architecture']}): codes differ from aelab's by at most "
              f"{r['codes']:.2e} (largest code {r['code_scale']:.2f}, L0 {r['l0']:.1f}), reconstructions by "
              f"{r['recon']:.2e}: {'OK' if good else 'MISMATCH'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
