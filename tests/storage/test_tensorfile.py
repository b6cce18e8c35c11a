"""The one safetensors reader and writer. The reader, through each of its four uses (run weights, a saved baseline,
the cached feature classifier, a saved or pickled estimator): a truncated file, a header that lies about a shape and
a NaN written into the tensor bytes each end in one UserError, never a safetensors or torch error. The writer: the
same bytes to a file and to a pickle, a file written whole, never through a link."""

from __future__ import annotations

import json
import shutil
import struct

import numpy as np
import pytest
import torch

from aelab.data.datasets import ImageSet
from aelab.errors import UserError
from aelab.estimators import Autoencoder, PCA
from aelab.evaluation.baselines import PCA as BaselinePCA
from aelab.evaluation.baselines import load_baseline
from aelab.evaluation.frechet import CLASSIFIER_FILE, FeatureNet, feature_classifier
from aelab.runs.runfolder import RunFolder, load_model
from aelab.storage import tensorfile

DAMAGE = ("truncated", "shape edited", "NaN written")


def damage(raw: bytes, how: str) -> bytes:
    """safetensors bytes cut short, with the first tensor's shape changed in the header, or a NaN over its first
    value (the header left as it was)."""
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    name, entry = next((k, v) for k, v in sorted(header.items()) if k != "__metadata__" and v["dtype"] in ("F32", "F64"))
    if how == "truncated":
        return raw[:len(raw) * 2 // 3]
    if how == "NaN written":
        start = 8 + n + entry["data_offsets"][0]
        nan = struct.pack("<f" if entry["dtype"] == "F32" else "<d", float("nan"))
        return raw[:start] + nan + raw[start + len(nan):]
    entry["shape"] = [*entry["shape"][:-1], entry["shape"][-1] + 1]
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + raw[8 + n:]


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("how", DAMAGE)
def test_run_weights_and_checkpoint(trained_run, tmp_path, how):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(damage((trained_run / "model.safetensors").read_bytes(), how))
    with pytest.raises(UserError, match="model.safetensors"):
        load_model(weights)
    run = shutil.copytree(trained_run, tmp_path / "run", ignore=shutil.ignore_patterns(".aelab-lock"))
    checkpoint = RunFolder(run).checkpoint_path
    checkpoint.write_bytes(damage(checkpoint.read_bytes(), how))
    like = {f"model.{k}": v for k, v in load_model(trained_run).state_dict().items()}
    with pytest.raises(UserError, match="checkpoint.safetensors"):
        tensorfile.load(checkpoint, like, exact=False)


@pytest.mark.parametrize("how", DAMAGE)
def test_saved_baseline(images, tmp_path, how):
    path = BaselinePCA(3).fit(ImageSet(images)).save(tmp_path / "pca.safetensors")
    assert load_baseline(path)[0].components_.shape == (3, 64)  # whole, it loads
    path.write_bytes(damage(path.read_bytes(), how))
    with pytest.raises(UserError, match="pca.safetensors.*refit"):
        load_baseline(path)


@pytest.mark.parametrize("how", DAMAGE)
def test_cached_feature_classifier(tmp_path, how):
    torch.manual_seed(0)
    net = FeatureNet()
    path = tensorfile.write(tmp_path / CLASSIFIER_FILE, net.state_dict(), {"test_accuracy": "0.875"})
    cached, accuracy = feature_classifier(cache=tmp_path)  # whole, it is used as it is: no training
    assert accuracy == 0.875 and torch.equal(cached.head.weight, net.head.weight)
    path.write_bytes(damage(path.read_bytes(), how))
    with pytest.raises(UserError, match=f"{CLASSIFIER_FILE}.*delete it"):
        feature_classifier(cache=tmp_path)


@pytest.mark.parametrize("how", DAMAGE)
@pytest.mark.parametrize("make", [lambda: PCA(n_components=3),
                                  lambda: Autoencoder("ae", settings={"latent": 2, "hidden": (8,)}, epochs=1,
                                                      batch_size=32)],
                         ids=["pca", "ae"])
def test_saved_and_pickled_estimator(make, images, tmp_path, how):
    X = images.reshape(len(images), -1).numpy()
    est = make().fit(X)
    path = est.save(tmp_path / "est.safetensors")
    np.testing.assert_array_equal(type(est).load(path).transform(X), est.transform(X))  # whole, it round-trips
    path.write_bytes(damage(path.read_bytes(), how))
    with pytest.raises(UserError, match="est.safetensors"):
        type(est).load(path)
    state = est.__getstate__()
    state["aelab_safetensors"] = damage(state["aelab_safetensors"], how)
    with pytest.raises(UserError, match="pickled estimator"):
        type(est).__new__(type(est)).__setstate__(state)


def test_the_writer_gives_one_bytes_to_files_and_pickles_and_refuses_a_link(tmp_path):
    weights = torch.arange(6.0, requires_grad=True).reshape(2, 3)  # in autograd, and its transpose not contiguous
    tensors, meta = {"w": weights, "t": weights.T}, {"format": "test"}
    path = tensorfile.write(tmp_path / "a.safetensors", tensors, meta)
    assert path.read_bytes() == tensorfile.to_bytes(tensors, meta)
    read, read_meta = tensorfile.load(path, {"w": weights, "t": weights.T})
    assert torch.equal(read["t"], weights.T) and read_meta == meta
    target = tmp_path / "elsewhere.safetensors"
    target.write_bytes(b"the user's")
    (tmp_path / "link.safetensors").symlink_to(target)
    with pytest.raises(UserError, match="link"):
        tensorfile.write(tmp_path / "link.safetensors", tensors, meta)
    assert target.read_bytes() == b"the user's" and sorted(p.name for p in tmp_path.iterdir()) == \
        ["a.safetensors", "elsewhere.safetensors", "link.safetensors"]  # no temporary file left
