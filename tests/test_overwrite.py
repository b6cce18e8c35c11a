"""`--overwrite`, in one place: without it no command replaces a run or an output; with it, train replaces only a
folder aelab made (a user's files, a look-alike, a run holding a user's file are refused in one line). The commands
run through `cli.main` in this process: what they replace or keep is the point, not the process."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from aelab.errors import UserError
from aelab.experiments.pipeline import train
from aelab.runs.runfolder import RunFolder
from aelab.runs.settings import resolve
from aelab.storage import files
from support.folders import snapshot
from support.process import assert_user_error, in_process

LOCK, MARKER = RunFolder(".").lock_path.name, RunFolder(".").marker_path.name


def copy_run(run, to):
    shutil.copytree(run, to, symlinks=True, ignore=shutil.ignore_patterns(LOCK))
    return to


def train_subset(data, out, seed: int = 0) -> RunFolder:
    """One epoch of the chapter's model in this process."""
    assert train(resolve("ae", None, {"data.path": str(data), "train.epochs": 1, "train.seed": seed}), out=out) == 0
    return RunFolder(out)


def test_existing_run_is_never_overwritten_without_asking(trained_run, subset_npz, capsys):
    before = snapshot(trained_run)
    result = in_process(["train", "--data", subset_npz, "--epochs", 1, "--out", trained_run], capsys)
    assert_user_error(result, "already exists", "--overwrite")
    assert snapshot(trained_run) == before


def test_overwrite_refuses_a_folder_that_is_not_a_run(subset_npz, tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    before = snapshot(tmp_path / "mine")
    result = in_process(["train", "--data", subset_npz, "--epochs", 1, "--out", tmp_path / "mine", "--overwrite"], capsys)
    assert_user_error(result, "not an aelab run folder")
    assert snapshot(tmp_path / "mine") == before


@pytest.mark.parametrize("command, taken", [("reconstruct", "taken.png"), ("encode", "taken.npy"),
                                            ("decode", "taken")])
def test_existing_output_is_never_overwritten_without_asking(command, taken, trained_run, fashion, tmp_path, capsys,
                                                             one_thread):
    pngs = [tmp_path / f"item{i}.png" for i in range(2)]
    for path, image in zip(pngs, fashion[1].images[:2, 0].numpy()):
        Image.fromarray(image).save(path)
    np.save(tmp_path / "codes.npy", np.zeros((2, 20), np.float32))
    inputs = [tmp_path / "codes.npy"] if command == "decode" else pngs
    out = tmp_path / taken
    if out.suffix:
        out.write_bytes(b"keep me")
    else:
        out.mkdir()
        (out / "00000.png").write_bytes(b"keep me too")
    before = snapshot(tmp_path)
    assert_user_error(in_process([command, trained_run, *inputs, "--out", out], capsys), "already exists",
                      "--overwrite")
    assert snapshot(tmp_path) == before
    result = in_process([command, trained_run, *inputs, "--out", out, "--overwrite"], capsys)
    assert result.returncode == 0, result.stderr
    assert snapshot(tmp_path) != before


def test_overwrite_removes_only_what_aelab_made(trained_run, subset_npz, tmp_path, capsys):
    project = tmp_path / "project"  # a user's folder that happens to hold a config.json
    project.mkdir()
    (project / "config.json").write_text('{"name": "my project"}')
    (project / "notes.txt").write_text("precious")
    lookalike = tmp_path / "lookalike"  # only names aelab uses, yet not aelab's
    lookalike.mkdir()
    (lookalike / "config.json").write_text('["not", "aelab"]')
    (lookalike / "report.md").write_text("my report")
    for folder, words in ((project, ("notes.txt", "will not delete")), (lookalike, ("not an aelab run folder",))):
        before = snapshot(folder)
        assert_user_error(in_process(["train", "--data", subset_npz, "--epochs", 1, "--out", folder, "--overwrite"],
                                     capsys), *words)
        assert snapshot(folder) == before

    marked = copy_run(trained_run, tmp_path / "marked")
    (marked / "grids" / "mine.png").write_bytes(b"x")  # aelab's folder, with something of the user's inside
    assert_user_error(in_process(["train", "--data", subset_npz, "--epochs", 1, "--out", marked, "--overwrite"],
                                 capsys), "grids/mine.png")
    assert (marked / "grids" / "mine.png").read_bytes() == b"x"
    # a run written before the marker existed is still aelab's, and so is what a run killed at birth left
    old = copy_run(trained_run, tmp_path / "old")
    (old / MARKER).unlink()
    RunFolder(old).check(replacing=True)
    stillborn = tmp_path / "stillborn"
    stillborn.mkdir()
    (stillborn / f".{MARKER}.999999999{files.TMP_SUFFIX}").write_text("")
    RunFolder(stillborn).check(replacing=True)


@pytest.mark.usefixtures("one_thread")
def test_overwrite_replaces_a_run_only_when_asked(subset_npz, tmp_path):
    run = train_subset(subset_npz, tmp_path / "run")
    first = run.weights_path.read_bytes()
    with pytest.raises(UserError, match="already exists"):
        train_subset(subset_npz, tmp_path / "run", seed=5)
    assert run.weights_path.read_bytes() == first
    assert train(resolve("ae", None, {"data.path": str(subset_npz), "train.epochs": 1, "train.seed": 5}),
                 out=run.path, overwrite=True) == 0
    assert run.weights_path.read_bytes() != first
