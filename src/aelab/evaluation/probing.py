"""Whether a model's units mean anything, measured against labels (SAEBench's label-based measures, Karvonen et al.
2025), on labelled activations: `aelab activations` keeps each row's place in its source data set, whose classes
(Fashion-MNIST's ten) ride along.

- sparse probing: for each class, the k units whose mean activation differs most between the class and the rest
  (on the training split), and a logistic probe on those k alone (class against rest, balanced); the mean test
  accuracy over classes for k = 1, 2, 5, beside the same on the raw activations (k of their dimensions);
- TPP (targeted probe perturbation): a logistic probe per class on the raw activations; ablating the TPP_UNITS
  units whose mean activation is most above the rest's for class i (their share of the reconstruction taken out of the input, the model's error kept) should cut probe
  i's accuracy and leave the others': the mean drop of the class's own probe minus the mean drop of the other
  classes' probes. Beside it, the same with the chosen raw dimensions set to their training mean.

Every probe is torch's (evaluate.logistic_probe: L-BFGS on standardised inputs, no weight on a column constant on
its training inputs), on at most PER_SIDE inputs of the class and as many of the rest, the same draw every time; the
units are chosen on at most TRAIN_ROWS training inputs.
"""

from __future__ import annotations

import numpy as np
import torch

from aelab.errors import UserError
from aelab.evaluation.evaluate import linear_probe_accuracy, logistic_probe

KS = (1, 2, 5)       # sparse probing: units per probe
TPP_UNITS = 10       # TPP: units (or raw dimensions) ablated per class
PER_SIDE = 1000      # each probe trains (and is tested) on at most this many inputs of its class, and of the rest
PROBING = tuple(f"probe_{kind}k{k}" for kind in ("", "raw_") for k in KS) + ("tpp", "tpp_raw")  # the measures
TRAIN_ROWS = 20_000  # training inputs read (a fixed draw): the units' means and the probes' training inputs


def activation_labels(path, train, test) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The class of each row of the training and test splits of an activations file (`path`, split by load_dataset
    into `train` and `test`), from the labelled data set its ACTS.json names; None where there are none."""
    from aelab.data.activations import description, sidecar_paths, source_images

    if path is None or getattr(train, "rows", None) is None:
        return None
    described = description(path)
    if described is None:
        return None
    source = source_images(described)
    index_path = sidecar_paths(path)[0]
    if source is None or source.labels is None or not index_path.is_file():
        return None
    index = torch.from_numpy(np.load(index_path))
    if len(index) != len(train) + len(test) or index.max() >= len(source.labels):
        raise UserError(f"{path}'s index does not fit its source's labels; write the activations again")
    labels = source.labels[index]
    held_out = np.ones(len(index), dtype=bool)
    held_out[train.rows.numpy()] = False
    return labels[train.rows], labels[torch.from_numpy(np.flatnonzero(held_out))]


def measures_if_labelled(model, path, train, test, required: bool = False) -> dict[str, float]:
    """label_measures of a model trained on the activations file `path` (split into `train` and `test`), where its
    rows have labels; else nothing, or, if `required`, one line saying why there are none and how to get them."""
    from aelab.data.datasets import gather

    labels = activation_labels(path, train, test)
    if labels is None:
        if required:
            raise UserError(f"{path or 'the data'} has no labels for its rows: label-based measures need activations "
                            "written by `aelab activations` from a labelled data set (e.g. Fashion-MNIST)")
        return {}
    pick = np.arange(len(train))
    if len(pick) > TRAIN_ROWS:
        pick = np.sort(np.random.default_rng(0).choice(len(pick), TRAIN_ROWS, replace=False))
    train_x = torch.from_numpy(gather(train.data, train.rows.numpy()[pick]).astype(np.float32))
    test_x = torch.from_numpy(np.asarray(test.data if test.rows is None else gather(test.data, test.rows.numpy()),
                                         dtype=np.float32))
    return label_measures(model, train_x, labels[0][torch.from_numpy(pick)], test_x, labels[1])


def _balanced(labels: torch.Tensor, c: int, seed: int) -> torch.Tensor:
    """Row numbers: up to PER_SIDE of class c and as many of the rest, drawn the same way every time."""
    g = torch.Generator().manual_seed(seed)
    mine, rest = (labels == c).nonzero().squeeze(1), (labels != c).nonzero().squeeze(1)
    n = min(PER_SIDE, len(mine), len(rest))
    return torch.cat([mine[torch.randperm(len(mine), generator=g)[:n]], rest[torch.randperm(len(rest), generator=g)[:n]]])


def _chosen(values: torch.Tensor, labels: torch.Tensor, c: int, k: int, signed: bool = False) -> torch.Tensor:
    """The k columns of values (n, width) whose mean differs most between class c and the rest (`signed`: is
    largest for the class against the rest)."""
    diff = values[labels == c].mean(0) - values[labels != c].mean(0)
    return (diff if signed else diff.abs()).topk(min(k, values.shape[1])).indices


@torch.no_grad()
def label_measures(model, train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                   test_y: torch.Tensor) -> dict[str, float]:
    """Sparse probing at each k of KS and TPP, of the model's code and of the raw inputs (b, d) in the data's own
    units: probe_k1, probe_raw_k1, ..., tpp, tpp_raw. The probes start from a fixed seed: the same answer every
    time, whatever the global random state."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return _label_measures(model, train_x, train_y, test_x, test_y)


def _label_measures(model, train_x, train_y, test_x, test_y) -> dict[str, float]:
    model.eval()
    classes = sorted(set(train_y.tolist()) & set(test_y.tolist()))
    if len(classes) < 2:
        raise UserError("label-based measures need at least two classes in both the training and the test split")
    train_z, test_z = (torch.as_tensor(model.encode(x)).float().cpu() for x in (train_x, test_x))
    out = {}
    for name, tr, te in (("", train_z, test_z), ("raw_", train_x, test_x)):
        for k in KS:
            accuracies = []
            for c in classes:
                cols = _chosen(tr, train_y, c, k)
                a, b = _balanced(train_y, c, c), _balanced(test_y, c, c + 1000)
                accuracies.append(linear_probe_accuracy(tr[a][:, cols], (train_y[a] == c).long(), te[b][:, cols],
                                                        (test_y[b] == c).long()))
            out[f"probe_{name}k{k}"] = float(np.mean(accuracies))
    probes, tests = {}, {}
    for c in classes:
        a, b = _balanced(train_y, c, c), _balanced(test_y, c, c + 1000)
        probes[c] = logistic_probe(train_x[a], (train_y[a] == c).long(), 2)
        tests[c] = (b, (test_y[b] == c).long())
    accuracy = lambda c, x: (probes[c](x[tests[c][0]]) == tests[c][1]).float().mean().item()  # noqa: E731
    clean = {c: accuracy(c, test_x) for c in classes}
    mean = train_x.float().mean(0)
    for name in ("tpp", "tpp_raw"):
        own, others = [], []
        for i in classes:
            if name == "tpp":  # take the chosen units' share of the reconstruction out of every test input
                units = _chosen(train_z, train_y, i, TPP_UNITS, signed=True)
                kept = test_z.clone()
                kept[:, units] = 0
                ablated = test_x - (torch.as_tensor(model.decode(test_z)) - torch.as_tensor(model.decode(kept))).cpu()
            else:
                dims = _chosen(train_x, train_y, i, TPP_UNITS, signed=True)
                ablated = test_x.clone()
                ablated[:, dims] = mean[dims]
            for j in classes:
                (own if j == i else others).append(clean[j] - accuracy(j, ablated))
        out[name] = float(np.mean(own) - np.mean(others))
    return out
