"""`aelab compare` end to end on a small real subset: figure, tables, reuse of finished runs, refusals."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from aelab.cli import main
from aelab.data.load import load_dataset


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A .npz of 1000 training and 200 test images drawn from the real data, with labels."""
    train, test = load_dataset()
    g = np.random.default_rng(0)
    i, j = g.choice(len(train), 1000, replace=False), g.choice(len(test), 200, replace=False)
    path = tmp_path_factory.mktemp("data") / "small.npz"
    np.savez(path, x_train=train.images[i, 0].numpy(), y_train=train.labels[i].numpy(),
             x_test=test.images[j, 0].numpy(), y_test=test.labels[j].numpy())
    return path


def test_compare_end_to_end(small, tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["compare", "--data", str(small), "--epochs", "1", "--out", str(out), "--threads", "1"]
    assert main(args) == 0
    rows = json.loads((out / "compare.json").read_text())
    assert [r["method"] for r in rows] == ["ae", "logistic_pca", "pca"]
    for r in rows:
        assert r["latent"] == 30 and r["sse_per_image"] > 0 and 0 < r["bce"] < 1 and r["parameters"] > 0
        assert 0.1 < r["knn_accuracy"] <= 1 and 0.1 < r["probe_accuracy"] <= 1
    by = {r["method"]: r for r in rows}
    assert by["pca"]["parameters"] == 31 * 784 and by["ae"]["epochs"] == 1
    assert by["logistic_pca"]["bce"] < by["pca"]["bce"]            # it fits the Bernoulli likelihood
    with open(out / "compare.csv") as f:
        assert [r["method"] for r in csv.DictReader(f)] == ["ae", "logistic_pca", "pca"]
    assert "| logistic_pca | gmm | 30 |" in (out / "compare.md").read_text()  # each method's own sampler
    with Image.open(out / "reconstructions_k30.png") as png:
        assert png.width > 10 * 28 and png.height > 4 * 28    # a row of real images and one per method

    # the outputs are kept unless asked; finished runs are reused with --overwrite (no retraining)
    capsys.readouterr()
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    weights = (out / "runs" / "ae-k30" / "model.safetensors").stat().st_mtime_ns
    assert main(args + ["--overwrite", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)                  # progress went to stderr
    assert [r["sse_per_image"] for r in again] == pytest.approx([r["sse_per_image"] for r in rows])
    assert (out / "runs" / "ae-k30" / "model.safetensors").stat().st_mtime_ns == weights


def test_compare_several_code_sizes_and_a_trained_run(small, tmp_path, capsys):
    out = tmp_path / "sizes"
    assert main(["compare", "pca", "--latents", "2,10", "--data", str(small), "--out", str(out),
                 "--run", f"mine={tmp_path / 'none'}"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["compare", "pca", "--latents", "2,10", "--data", str(small), "--out", str(out), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["latent"] for r in rows] == [2, 10] and rows[0]["sse_per_image"] > rows[1]["sse_per_image"]
    for name in ("error_vs_latent.png", "reconstructions_k2.png", "reconstructions_k10.png"):
        assert (out / name).is_file()
    assert main(["compare", "nonsense", "--data", str(small), "--out", str(tmp_path / "x")]) == 2
    assert "unknown method" in capsys.readouterr().err


def test_compare_puts_each_method_and_sampler_in_a_row(small, tmp_path, capsys):
    """`--sampler prior,gmm`: a vae gets both rows, an ae (no prior) and PCA the gmm row, each measured against
    the test images and drawn as a grid; the vae's NLL, with its K, stands beside its samples."""
    out = tmp_path / "gen"
    argv = ["compare", "vae", "ae", "pca", "--latent", "4", "--epochs", "1", "--data", str(small), "--out", str(out),
            "--sampler", "prior,gmm", "--samples", "150"]
    assert main(argv) == 0
    rows, grids = json.loads((out / "compare.json").read_text()), []
    assert [(r["method"], r["sampler"]) for r in rows] == [("vae", "prior"), ("vae", "gmm"), ("ae", "gmm"),
                                                          ("pca", "gmm")]
    for r in rows:
        assert r["frechet"] > 0 and r["frechet_floor"] > 0 and all(0 <= r[k] <= 1 for k in ("precision", "recall",
                                                                                           "coverage"))
        with Image.open(out / f"samples_{r['method']}-k4-{r['sampler']}.png") as png:
            assert png.size == (280, 280)  # 10x10 samples
            grids.append(np.asarray(png))
    assert all(g.std() > 0 for g in grids) and not np.array_equal(grids[0], grids[1])  # vae: prior, gmm
    vae = [r for r in rows if r["method"] == "vae"]
    assert vae[0]["sse_per_image"] == vae[1]["sse_per_image"] and vae[0]["frechet"] != vae[1]["frechet"]
    assert vae[0]["nll"] > 0 and vae[0]["nll_k"] == 100 and rows[2]["nll"] is None
    table = (out / "compare.md").read_text()
    assert "| vae | gmm | 4 |" in table and "K = 100" in table and "Naeem" in table
    assert (out / "runs" / "vae-k4" / "gmm.safetensors").is_file()  # compare's own runs keep their mixture

    for bad, words in ((["--sampler", "prior,magic"], "unknown sampler 'magic'"),
                       (["--sampler", "prior", "--components", "3"], "add gmm to --sampler")):
        capsys.readouterr()
        assert main(["compare", "pca", "--data", str(small), "--out", str(tmp_path / "x"), *bad]) == 2
        assert words in capsys.readouterr().err and not (tmp_path / "x").exists()
