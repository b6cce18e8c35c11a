"""The run folder a training writes (safe formats only, weights equal to the bit) and the Python API of a trained
model (the test grid read back as pixels: tests/reports/test_report.py)."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from aelab.errors import UserError
from aelab.runs.runfolder import RunFolder, load_model
from aelab.runs.settings import from_dict, resolve
from aelab.storage import tensorfile
from conftest import RUN_EPOCHS

SAFE_SUFFIXES = {".json", ".jsonl", ".safetensors", ".png", ".gif", ".md", ".html"}


@pytest.fixture
def one_thread():
    """The run was trained with --threads 1; recomputing its pictures on one thread gives the same floats."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------- the run folder

def test_run_folder_holds_config_metrics_weights_pictures_and_report(trained_run, subset_npz):
    files = {p.relative_to(trained_run).as_posix() for p in trained_run.rglob("*") if p.is_file()}
    grids = {f"grids/epoch_{e:03d}.png" for e in range(1, RUN_EPOCHS + 1)}
    assert files == {"config.json", "metrics.jsonl", "model.safetensors", "checkpoint.safetensors", "eval.json",
                     "loss.png", "report.md", "report.html", "grids.gif", ".aelab-run", ".aelab-lock"} | grids

    config = json.loads((trained_run / "config.json").read_text())
    assert config["model_name"] == "ae" and config["data"]["path"] == str(subset_npz)
    assert config["train"]["epochs"] == RUN_EPOCHS and config["train"]["batch_size"] == 512
    assert config["model"]["latent"] == 20 and config["model"]["hidden"] == [256, 128, 64]
    assert from_dict(config).to_dict() == from_dict(json.loads(json.dumps(config))).to_dict()

    lines = (trained_run / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["epoch"] for r in records] == list(range(1, RUN_EPOCHS + 1))
    for r in records:
        assert {"train_loss", "test_loss", "seconds"} <= r.keys()
        assert 0 < r["test_loss"] < 1 and 0 < r["train_loss"] < 1

    eval_json = json.loads((trained_run / "eval.json").read_text())
    assert eval_json["bce"] == pytest.approx(records[-1]["test_loss"], rel=1e-5)  # same set, same measure

    with Image.open(trained_run / "loss.png") as img:
        assert img.format == "PNG" and img.width > 200 and img.height > 100
    report = (trained_run / "report.md").read_text()
    for needle in ("487,588 parameters", "bce_floor", "loss.png", f"grids/epoch_{RUN_EPOCHS:03d}.png",
                   "Total params: 487,588", f"{RUN_EPOCHS} epochs"):
        assert needle in report, needle


def _safetensors_header(path) -> dict:
    """The JSON header of a safetensors file, parsed by hand: 8-byte little-endian length, then JSON."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    end = max(t["data_offsets"][1] for k, t in header.items() if k != "__metadata__")
    assert len(raw) == 8 + n + end  # nothing hidden after the tensors
    return header


def test_no_pickle_anywhere_in_a_run(trained_run):
    for path in trained_run.rglob("*"):
        if not path.is_file() or path.name in (".aelab-run", ".aelab-lock"):  # plain text: a marker, a PID
            continue
        assert path.suffix in SAFE_SUFFIXES, path
        head = path.read_bytes()[:8]
        assert not head.startswith(b"\x80") and not head.startswith(b"PK\x03\x04"), path  # pickle / torch.save zip
        if path.suffix == ".safetensors":
            header = _safetensors_header(path)
            assert header["__metadata__"]["format"] == "aelab/1"
        elif path.suffix in (".png", ".gif"):
            with Image.open(path) as img:
                assert img.format == path.suffix[1:].upper()
        elif path.suffix == ".json":
            json.loads(path.read_text())


def test_weights_load_back_equal_to_the_bit(trained_run, tmp_path):
    model = load_model(trained_run)
    assert not model.training
    saved = load_file(trained_run / "model.safetensors")
    # the trainer's in-memory weights at the end went into the checkpoint too
    in_checkpoint = {k[6:]: v for k, v in load_file(trained_run / "checkpoint.safetensors").items()
                     if k.startswith("model.")}
    state = model.state_dict()
    assert state.keys() == saved.keys() == in_checkpoint.keys()
    for k in state:
        assert torch.equal(state[k], saved[k]) and torch.equal(state[k], in_checkpoint[k]), k
    # save -> load round trip through a fresh file; the file stands alone (its config is in its metadata)
    run = RunFolder(tmp_path)
    run.save_weights(model, RunFolder.open(trained_run).config(), epoch=RUN_EPOCHS)
    again = load_model(tmp_path / "model.safetensors")
    for k, v in again.state_dict().items():
        assert v.dtype == state[k].dtype and torch.equal(v, state[k]), k
    meta = json.loads(tensorfile.metadata(tmp_path / "model.safetensors")["config"])
    assert meta == json.loads((trained_run / "config.json").read_text())


def test_a_corrupt_weights_file_is_a_user_error(trained_run, tmp_path):
    broken = tmp_path / "model.safetensors"
    broken.write_bytes((trained_run / "model.safetensors").read_bytes()[:1000])
    with pytest.raises(UserError, match="not a readable safetensors file"):
        load_model(broken)
    with pytest.raises(UserError, match="does not exist"):
        load_model(tmp_path / "missing")
    with pytest.raises(UserError, match="not an aelab run"):
        load_model(tmp_path)


# ---------------------------------------------------------------------------------------------- Python API

def test_api_encodes_decodes_and_reconstructs_numpy_and_tensors(trained_model, fashion):
    model = trained_model
    u8 = fashion[1].images[:8]          # torch uint8 (8, 1, 28, 28)
    np_u8 = u8[:, 0].numpy()            # numpy uint8 (8, 28, 28)

    z_np = model.encode(np_u8)
    assert isinstance(z_np, np.ndarray) and z_np.dtype == np.float32 and z_np.shape == (8, 20)
    z_t = model.encode(u8)
    assert isinstance(z_t, torch.Tensor) and z_t.dtype == torch.float32 and z_t.shape == (8, 20)
    assert np.array_equal(z_np, z_t.numpy())
    assert np.allclose(model.encode(np_u8.astype(np.float32) / 255), z_np, atol=1e-6)  # floats in [0, 1]
    assert np.allclose(model.encode(np_u8.reshape(8, 784)), z_np, atol=1e-6)           # flat rows

    images = model.decode(z_np)
    assert isinstance(images, np.ndarray) and images.shape == (8, 1, 28, 28) and images.dtype == np.float32
    assert images.min() >= 0 and images.max() <= 1
    images_t = model.decode(z_t)
    assert isinstance(images_t, torch.Tensor) and torch.equal(images_t, torch.from_numpy(images))

    recon = model.reconstruct(u8)
    assert recon.shape == (8, 1, 28, 28) and torch.allclose(recon, images_t, atol=1e-6)
    assert isinstance(model.reconstruct(np_u8), np.ndarray)
    assert not z_t.requires_grad and not recon.requires_grad
    # a trained model reconstructs: closer to its input than the mean image is
    x = u8.float() / 255
    assert ((recon - x) ** 2).mean() < ((fashion[1].floats().mean(0) - x) ** 2).mean()


def test_api_rejects_wrong_shapes(trained_model):
    with pytest.raises(UserError, match="do not fit this model"):
        trained_model.encode(np.zeros((2, 32, 32), np.uint8))
    with pytest.raises(UserError, match=r"shape \(n, 20\)"):
        trained_model.decode(np.zeros((2, 3), np.float32))


def test_a_run_saved_before_vector_scale_existed_reads_as_standardised(tmp_path):
    config = resolve("sae")
    saved = config.to_dict()
    del saved["data"]["vector_scale"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert RunFolder(tmp_path).config().data.vector_scale == "standardise"
    saved["data"]["vector_scale"] = "none"  # a run that names its scale keeps it
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert RunFolder(tmp_path).config().data.vector_scale == "none"


@pytest.mark.parametrize("bad, said", [("abc", "'abc'"), ([1], "'[1]'")], ids=["text", "list"])
def test_a_measure_that_is_not_a_number_is_refused_by_report(trained_run, tmp_path, capsys, bad, said):
    import shutil

    from support.folders import snapshot
    from support.process import assert_user_error, in_process

    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns(".aelab-lock"))
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines[1] = json.dumps({**json.loads(lines[1]), "train_loss": bad})
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    before = snapshot(run)
    assert_user_error(in_process(["report", run, "--out", tmp_path / "page.html"], capsys), "line 2", "train_loss", said,
                      "not a number")
    assert snapshot(run) == before and not (tmp_path / "page.html").exists()
