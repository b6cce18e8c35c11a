"""`aelab score` end to end on real Fashion-MNIST images and on vectors, in this process: the CSV against the
library and scikit-learn, the threshold the run keeps, the pictures read back, the report; and bad input refused
in one line with nothing written."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score

from support.folders import snapshot
from support.process import assert_user_error, in_process

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def run(trained_run, tmp_path):
    """A copy of the session's tiny run (scoring writes into the run folder)."""
    return shutil.copytree(trained_run, tmp_path / "run")


def rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_score_writes_scores_ranks_flags_measures_pictures_and_the_report(run, subset_npz, tmp_path, capsys):
    from aelab.data.datasets import ImageSet
    from aelab.data.load import read_inputs
    from aelab.evaluation import anomaly
    from aelab.runs.runfolder import RunFolder, load_model

    out, top = tmp_path / "scores.csv", tmp_path / "top.png"
    result = in_process(["score", run, subset_npz, "--normal-class", 7, "--top", 12, "--out", out,
                         "--out-images", top], capsys)
    assert result.returncode == 0, result.stderr
    table = rows(out)
    scores = np.array([float(r["score"]) for r in table])
    labels = np.array([int(r["label"]) for r in table])
    ranks = np.array([int(r["rank"]) for r in table])
    assert len(table) == 1000 and sorted(ranks) == list(range(1, 1001))
    assert ranks[np.argmax(scores)] == 1
    # the model's own score, recomputed by the library, and the threshold from the training scores it keeps
    model = load_model(run)
    images = read_inputs([subset_npz]).images
    reference, train_scores = anomaly.kept(RunFolder(run), model, "recon")
    assert len(train_scores) == 3000
    assert np.allclose(scores, anomaly.scores(model, ImageSet(images), "recon", reference), rtol=1e-5)
    limit = np.quantile(train_scores, 0.99)
    assert [int(r["flag"]) for r in table] == list((scores > limit).astype(int))
    assert (labels == (np.load(subset_npz)["y_test"] != 7)).all()
    auroc = roc_auc_score(labels, scores)
    assert f"AUROC {auroc:.4f}" in result.stdout
    assert f"average precision {average_precision_score(labels, scores):.4f}" in result.stdout

    # 12 inputs, 10 a row: two blocks of inputs / reconstructions / error maps, the most anomalous first
    picture = np.asarray(Image.open(top))
    assert picture.shape == (6 * 28 + 5 * 2, 10 * 28 + 9 * 2)  # 2 white pixels between cells
    first = images[np.argmax(scores), 0].numpy()
    assert np.array_equal(picture[:28, :28], first)
    assert (picture[-28:, 2 * 30:] == 255).all()  # the short last row is padded white

    report = (run / "report.md").read_text()
    assert "## Anomaly scores" in report and f"AUROC {auroc:.4f}" in report
    for name in ("anomaly_scores.png", "anomaly_curves.png", "anomaly_top.png"):
        assert Image.open(run / name).size[0] > 200, name
    # the training scores are computed once: a second scoring, by contamination, reuses them
    kept = (run / "anomaly.safetensors").stat().st_mtime_ns
    result = in_process(["score", run, subset_npz, "--contamination", 0.2, "--out", tmp_path / "again.csv"], capsys)
    assert result.returncode == 0, result.stderr
    assert (run / "anomaly.safetensors").stat().st_mtime_ns == kept
    flags = [int(r["flag"]) for r in rows(tmp_path / "again.csv")]
    assert flags == list((scores > np.quantile(train_scores, 0.8)).astype(int))
    assert not (run / "anomaly_curves.png").exists()  # no labels this time: no curves in the report


def test_vectors_score_by_squared_error_and_labels_from_a_file(flat_vector_run, tmp_path, capsys):
    folder, trained = flat_vector_run
    assert trained.returncode == 0
    labels = np.zeros(600, int)
    labels[:50] = 1
    np.savetxt(tmp_path / "labels.txt", labels, fmt="%d")
    out = tmp_path / "scores.csv"
    result = in_process(["score", folder / "run", folder / "flat.npy", "--labels", tmp_path / "labels.txt",
                         "--threshold", 1e9, "--out", out], capsys)
    assert result.returncode == 0, result.stderr
    table = rows(out)
    assert len(table) == 600 and not any(int(r["flag"]) for r in table)  # nothing above 1e9
    assert "AUROC" in result.stdout


@pytest.mark.parametrize("args, words", [
    (["--contamination", "0.7"], ["contamination", "(0, 0.5]"]),
    (["--contamination", "0"], ["contamination"]),
    (["--contamination", "0.1", "--threshold", "3"], ["not both"]),
    (["--normal-class", "12"], ["class 12", "labels"]),
    (["--labels", "LABELS"], ["999 labels for 1000 inputs"]),
    (["--score", "likelihood"], ["likelihood", "recon"]),
    (["--out-images", "top.jpg"], ["png"]),
])
def test_bad_input_is_one_line_and_writes_nothing(run, subset_npz, tmp_path, capsys, args, words):
    np.save(tmp_path / "labels.npy", np.ones(999, np.int64))
    args = [str(tmp_path / "labels.npy") if a == "LABELS" else a for a in args]
    args = [str(tmp_path / a) if a.endswith(".jpg") else a for a in args]
    before = snapshot(run)
    assert_user_error(in_process(["score", run, subset_npz, "--out", tmp_path / "s.csv", *args], capsys), *words)
    assert snapshot(run) == before and not (tmp_path / "s.csv").exists()


def test_inputs_that_do_not_fit_the_run_are_refused(run, tmp_path, capsys):
    np.save(tmp_path / "small.npy", np.zeros((4, 10, 10), np.uint8))
    np.save(tmp_path / "vectors.npy", np.zeros((4, 7)))
    before = snapshot(run)
    for inputs, words in ((tmp_path / "small.npy", ["(1, 10, 10)", "1x28x28"]),
                          (tmp_path / "nothing", ["does not exist"])):
        assert_user_error(in_process(["score", run, inputs, "--out", tmp_path / "s.csv"], capsys), *words)
    assert_user_error(in_process(["score", run, tmp_path / "small.npy", "--out", tmp_path / "s.txt"], capsys), "csv")
    assert_user_error(in_process(["score", tmp_path / "norun", tmp_path / "small.npy", "--out", tmp_path / "s.csv"],
                                 capsys), "does not exist")
    assert snapshot(run) == before and not (tmp_path / "s.csv").exists()
