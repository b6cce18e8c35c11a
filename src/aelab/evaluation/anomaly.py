"""Anomaly detection with a trained model: per-input scores (higher is stranger), the training scores and threshold
a run keeps, and the measures of a labelled scoring (AUROC, average precision, their curves), in numpy.

The scores are the model's own (`anomaly_kinds` / `anomaly_scores` of models/contract.py); this module batches
them, fits what they need from the training data once, and turns scores into flags and measures.
"""

from __future__ import annotations

import json

import numpy as np
import torch

from aelab.errors import UserError
from aelab.storage import tensorfile

BATCH = 1000           # inputs per forward pass
CONTAMINATION = 0.01   # the share of training inputs above the default threshold
FORMAT = "aelab-anomaly/1"


def check_contamination(contamination: float) -> float:
    if not (isinstance(contamination, (int, float)) and 0 < contamination <= 0.5):
        raise UserError(f"contamination is the expected share of anomalies, in (0, 0.5], not {contamination!r}")
    return float(contamination)


def kind_of(model, kind: str | None) -> str:
    """The score asked for, or the model's default; one line naming the choices if it has no such score."""
    if kind is None:
        return model.anomaly_kinds[0]
    if kind not in model.anomaly_kinds:
        raise UserError(f"a {model.title} has no anomaly score {kind!r}; use --score "
                        + " or ".join(model.anomaly_kinds))
    return kind


@torch.no_grad()
def scores(model, data, kind: str, reference: dict[str, torch.Tensor]) -> np.ndarray:
    """The score of every input of a set (ImageSet or VectorSet), float64 (n,)."""
    model.eval()
    reference = {k: v.to(model.device) for k, v in reference.items()}
    out = [model.anomaly_scores(x.to(model.device), kind, reference).double().cpu() for x in data.batches(BATCH)]
    return torch.cat(out).numpy() if out else np.zeros(0)


def fit(model, train, kind: str) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    """What the scores need from the training set, and the training inputs' own scores."""
    model.eval()
    fitted = model.anomaly_reference(x.to(model.device) for x in train.batches(BATCH))
    reference = {k: v.cpu() for k, v in fitted.items()}
    return reference, scores(model, train, kind, reference)


def threshold(train_scores: np.ndarray, contamination: float) -> float:
    """The score above which an input is flagged: the training scores' (1 - contamination) quantile."""
    return float(np.quantile(train_scores, 1 - check_contamination(contamination)))


# -- the run's kept reference: anomaly.safetensors ------------------------------------------------------------------

def kept(run, model, kind: str) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    """The reference and training scores of `kind` kept in the run folder, computed (from the run's training data)
    and written there the first time a score is asked for, and again once the weights change."""
    path, epoch = run.anomaly_path, str(run.weights_epoch())
    stored, meta = {}, {}
    if path.is_file():
        meta = tensorfile.metadata(path, fix=f"delete {path}, and `aelab score` computes it again")
        if meta.get("format") == FORMAT and meta.get("epoch") == epoch:
            stored, _ = tensorfile.load(path, dict.fromkeys(json.loads(meta["names"])), fix=f"delete {path}")
        else:
            meta = {}
    if f"train.{kind}" not in stored:
        train = run.config().data.load()[0]
        if tuple(train.shape) != model.in_shape:
            raise UserError(f"the run's training data are now {'x'.join(map(str, train.shape))}, not what it trained "
                            "on; give --threshold, or restore its data")
        reference, train_scores = fit(model, train, kind)
        stored.update(reference)
        stored[f"train.{kind}"] = torch.from_numpy(train_scores)
        tensorfile.write(path, stored, {"format": FORMAT, "epoch": epoch, "names": json.dumps(sorted(stored))})
    reference = {k: v for k, v in stored.items() if not k.startswith("train.")}
    return reference, stored[f"train.{kind}"].double().numpy()


# -- measures of a labelled scoring --------------------------------------------------------------------------------

def _sorted_counts(scores_: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True and false positives flagged at each distinct score, from the highest down, and those scores."""
    order = np.argsort(-scores_, kind="stable")
    s, y = scores_[order], positive[order].astype(np.float64)
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the last of each run of tied scores
    tp = np.cumsum(y)[last]
    return tp, (last + 1) - tp, s[last]


def roc_curve(scores_: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates at every threshold, from (0, 0) to (1, 1)."""
    tp, fp, _ = _sorted_counts(scores_, positive)
    return np.r_[0, fp / max(fp[-1], 1)], np.r_[0, tp / max(tp[-1], 1)]


def auroc(scores_: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (ties count a half): the chance that an anomaly outscores a normal input."""
    fpr, tpr = roc_curve(scores_, positive)
    return float(np.trapezoid(tpr, fpr))


def pr_curve(scores_: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Recall and precision at every threshold, from the highest score down."""
    tp, fp, _ = _sorted_counts(scores_, positive)
    return tp / max(tp[-1], 1), tp / (tp + fp)


def average_precision(scores_: np.ndarray, positive: np.ndarray) -> float:
    """The precision at each threshold weighted by the recall it adds (scikit-learn's definition)."""
    recall, precision = pr_curve(scores_, positive)
    return float(np.sum(np.diff(np.r_[0, recall]) * precision))


def labelled_measures(scores_: np.ndarray, positive: np.ndarray) -> dict[str, float]:
    return {"auroc": auroc(scores_, positive), "average_precision": average_precision(scores_, positive),
            "anomalies": int(positive.sum()), "normal": int(len(positive) - positive.sum())}


# -- a scoring: scores, flags and the most anomalous inputs, kept for the report: scored.safetensors -----------------

def score_inputs(model, data, kind: str, reference: dict, train_scores: np.ndarray | None, contamination: float,
                 threshold_: float | None = None, positive: np.ndarray | None = None, top: int = 10) -> dict:
    """Scores of a set's inputs, their ranks (1: the most anomalous), flags above the threshold (`threshold_`, or
    the training scores' quantile at `contamination`), the `top` most anomalous inputs' indices and, with
    `positive` (True for an anomaly), the measures of the scoring."""
    values = scores(model, data, kind, reference)
    limit = threshold(train_scores, contamination) if threshold_ is None else float(threshold_)
    order = np.argsort(-values, kind="stable")
    ranks = np.empty(len(values), np.int64)
    ranks[order] = np.arange(1, len(values) + 1)
    result = {"kind": kind, "scores": values, "ranks": ranks, "flags": values > limit, "threshold": limit,
              "contamination": None if threshold_ is not None else contamination, "top": order[:top],
              "train_scores": train_scores, "positive": positive}
    if positive is not None:
        result["measures"] = labelled_measures(values, positive)
    return result


def write_scored(run, result: dict, source: str) -> None:
    tensors = {"scores": torch.from_numpy(result["scores"]), "top": torch.from_numpy(result["top"])}
    if result["positive"] is not None:
        tensors["positive"] = torch.from_numpy(result["positive"].astype(np.uint8))
    meta = {"format": FORMAT, "kind": result["kind"], "threshold": repr(result["threshold"]), "source": source,
            "contamination": json.dumps(result["contamination"]), "measures": json.dumps(result.get("measures"))}
    tensorfile.write(run.scored_path, tensors, meta)


def read_scored(run) -> dict | None:
    """The last scoring kept in the run (with the training scores of its kind), or None."""
    path = run.scored_path
    if not path.is_file():
        return None
    fix = f"score again with `aelab score`, or delete {path}"
    meta = tensorfile.metadata(path, fix=fix)
    names = {"scores": None, "top": None}
    try:
        tensors, _ = tensorfile.load(path, names, exact=False, fix=fix)
        train = tensorfile.load(run.anomaly_path, {f"train.{meta['kind']}": None}, exact=False, fix=fix)[0] \
            if run.anomaly_path.is_file() else {}
        result = {"kind": meta["kind"], "threshold": float(meta["threshold"]), "source": meta["source"],
                  "contamination": json.loads(meta["contamination"]), "measures": json.loads(meta["measures"])}
    except (KeyError, ValueError) as e:
        raise UserError(f"{path} is damaged ({e.__class__.__name__}); {fix}") from None
    positive = tensorfile.load(path, {"positive": None}, exact=False, fix=fix)[0]["positive"].bool().numpy() \
        if result["measures"] else None
    train_scores = train.get(f"train.{meta['kind']}")
    return {**result, "scores": tensors["scores"].double().numpy(), "top": tensors["top"].numpy(),
            "positive": positive, "train_scores": None if train_scores is None else train_scores.double().numpy()}
