"""Which of FSQ's implicit codes a trained conv run leaves unused, and why: each dimension's level frequencies over
the test set's grid positions, and how many of the unused codes sit at an outer level of 0-4 of their dimensions.

    python benchmarks/fsq_levels.py RUN [RUN ...]     # fsq runs, e.g. generative_claims.py's fsq_8,5,5,5-s0
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from aelab.runs.runfolder import RunFolder, load_model  # noqa: E402

torch.set_num_threads(1)
for out in sys.argv[1:]:
    model = load_model(out, "cpu").eval()
    grid = torch.tensor(model.config.grid)
    with torch.no_grad():  # the rounded code of every position, as the model's own usage count reads it
        codes = torch.cat([model.rounded(model.encoder(x).float()).movedim(1, -1).reshape(-1, len(grid))
                           for x in RunFolder.open(out).config().data.load_test().batches(2500)])
    digits = (codes + grid // 2).long()
    basis = torch.cumprod(torch.cat([torch.ones(1, dtype=torch.long), grid[:-1]]), 0)
    used = torch.bincount((digits * basis).sum(1), minlength=math.prod(grid.tolist())) > 0
    every = torch.arange(len(used))[:, None] // basis % grid  # each code number's level in each dimension
    outer = ((every == 0) | (every == grid - 1)).sum(1)
    print(f"{out}: {int(used.sum())} of {len(used)} codes used")
    for i, n in enumerate(grid.tolist()):
        share = torch.bincount(digits[:, i], minlength=n).float() / len(digits)
        print(f"  dimension {i} ({n} levels): " + " ".join(f"{v:.3f}" for v in share.tolist()))
    print("  unused codes by dimensions at an outer level (0, 1, ...):", torch.bincount(outer[~used], minlength=5).tolist(),
          "; all codes:", torch.bincount(outer, minlength=5).tolist())
