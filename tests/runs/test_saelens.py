"""`aelab export --format saelens`: SAELens's files, whose encode/decode (as SAELens computes them, written out
here in numpy) give aelab's codes and reconstructions on raw activations."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from aelab.cli import main
from support.process import aelab, assert_user_error, in_process


# the training and the exports run through cli.main in this process (what is checked is the files written); one
# refusal runs as a real process
@pytest.fixture(scope="module", params=["topk", "batchtopk", "jumprelu", "l1"])
def sae_run(request, tmp_path_factory, one_thread):
    from support.planted import planted_dictionary

    folder = tmp_path_factory.mktemp(request.param)
    vectors = planted_dictionary(1500, d=24, atoms=48, active=3)[0] * 7 + 3  # far from standardised
    np.save(folder / "v.npy", vectors)
    assert main(["train", "sae", "--data", str(folder / "v.npy"), "--epochs", "2", "--latent", "64", "--set",
                 f"sparsity={request.param}", "--set", "k=5", "--set", "l1=0.02", "--threads", "1",
                 "--out", str(folder / "run")]) == 0
    return folder / "run", vectors, request.param


def test_saelens_files_reproduce_aelab(sae_run, tmp_path):
    from aelab.runs.runfolder import load_model

    run, vectors, sparsity = sae_run
    assert main(["export", str(run), "--format", "saelens", "--out", str(tmp_path)]) == 0
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["architecture"] == {"topk": "topk", "l1": "standard"}.get(sparsity, "jumprelu")
    assert (cfg["d_in"], cfg["d_sae"], cfg["dtype"], cfg["apply_b_dec_to_input"]) == (24, 64, "float32", True)
    assert cfg["normalize_activations"] == "none" and cfg.get("k") == (5 if sparsity == "topk" else None)
    w = load_file(tmp_path / "sae_weights.safetensors")
    threshold = {"threshold": (64,)} if cfg["architecture"] == "jumprelu" else {}
    assert {k: v.shape for k, v in w.items()} == {"W_enc": (24, 64), "b_enc": (64,), "W_dec": (64, 24), "b_dec": (24,),
                                                  **threshold}
    model = load_model(run, "cpu")

    x = vectors[:300].astype(np.float64)
    pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]  # SAELens: process_sae_in, then the encoder
    if sparsity == "topk":
        codes = np.zeros_like(pre)
        top = np.argsort(-pre, axis=1)[:, :5]
        np.put_along_axis(codes, top, np.maximum(np.take_along_axis(pre, top, 1), 0), 1)
    elif sparsity == "l1":
        codes = np.maximum(pre, 0)
    else:  # SAELens's JumpReLUSAE.encode: relu(pre) * (pre > threshold)
        codes = np.maximum(pre, 0) * (pre > w["threshold"])
        if sparsity == "batchtopk":  # the running estimate over each unit's atom norm, and it does cut codes
            norms = model.decoder[0].weight.detach().norm(dim=0).numpy()
            assert model.threshold > 0 and np.allclose(w["threshold"] * norms, float(model.threshold), rtol=1e-6)
            assert ((pre > 0) & (codes == 0)).any()
        else:
            np.testing.assert_allclose(w["threshold"], model.threshold.detach().numpy(), rtol=1e-6)
    expected = model.encode(vectors[:300])
    np.testing.assert_allclose(codes, expected, atol=2e-4, rtol=1e-4)
    np.testing.assert_allclose(codes @ w["W_dec"] + w["b_dec"], model.reconstruct(vectors[:300]), atol=2e-3, rtol=1e-4)


@pytest.mark.parametrize("sae_run", ["topk"], indirect=True)  # what is refused does not depend on the sparsity
def test_refused_in_one_line(trained_run, sae_run, tmp_path, capsys):
    assert_user_error(aelab("export", trained_run, "--format", "saelens", "--out", tmp_path / "x"), "sparse autoencoders", "train sae")
    run = sae_run[0]
    assert in_process(["export", run, "--format", "saelens", "--out", tmp_path / "y"], capsys).returncode == 0
    assert_user_error(in_process(["export", run, "--format", "saelens", "--out", tmp_path / "y"], capsys),
                      "already holds", "overwrite")
