"""Nothing is lost, whatever the user does: no write follows a link, nothing aelab did not write is deleted, a run
stopped at any instant resumes to the same weights, and every refusal is one line (exit 2). Stops run as real
processes; a refusal's line and exit code come from `cli.main`, so most refusals run it in this process (one real
process each where the entry point matters)."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from support.folders import mounted
from support.process import SRC, aelab, assert_user_error, in_process


def _weights(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(run / "model.safetensors")


def _killed_in_first_epoch(args: list, sig: int) -> subprocess.Popen:
    """`aelab train ARGS` as a real process, sent `sig` once it has started its first epoch."""
    env = {**os.environ, "PYTHONPATH": str(SRC), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "aelab", "train", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    for line in proc.stdout:  # the settings are printed last, just before the first epoch starts
        if line.startswith("  train.cuda_graph"):
            break
    time.sleep(0.5)
    proc.send_signal(sig)
    proc.communicate(timeout=60)
    return proc


@pytest.fixture(scope="module")
def slow_npz(fashion, tmp_path_factory) -> Path:
    """Enough images (batches of 64) that a first epoch lasts seconds: time to be stopped inside it."""
    train, test = fashion
    path = tmp_path_factory.mktemp("data") / "slow.npz"
    np.savez(path, x_train=train.images[:12000, 0].numpy(), y_train=train.labels[:12000].numpy(),
             x_test=test.images[:300, 0].numpy(), y_test=test.labels[:300].numpy())
    return path


SLOW_ARGS = ["--epochs", 1, "--batch-size", 64, "--threads", 1, "--grid-every", 0]


@pytest.fixture(scope="module")
def slow_whole(slow_npz, tmp_path_factory, one_thread) -> Path:
    """The run never stopped, trained once for the module in this process (one thread: the CLI's weights, bitwise)."""
    from aelab.cli import main

    out = tmp_path_factory.mktemp("whole") / "run"
    assert main(["train", "--data", str(slow_npz), *map(str, SLOW_ARGS), "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_run_stopped_in_its_first_epoch_resumes_to_the_same_weights(slow_npz, slow_whole, tmp_path, sig, capsys):
    stopped = tmp_path / "stopped"
    proc = _killed_in_first_epoch(["--data", slow_npz, *SLOW_ARGS, "--out", stopped], sig)
    assert proc.returncode in (-signal.SIGKILL, 2), proc.returncode
    assert not (stopped / "checkpoint.safetensors").exists()  # stopped before any epoch ended
    resumed = in_process(["train", "--resume", stopped, "--threads", 1], capsys)  # what the stop left is the point
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = _weights(slow_whole), _weights(stopped)
    assert a.keys() == b.keys()
    assert all(a[k].equal(b[k]) for k in a)  # bit for bit
    assert len((stopped / "metrics.jsonl").read_text().splitlines()) == 1


def test_make_chapters_resume_line_continues_a_run_killed_in_its_first_epoch(slow_npz, tmp_path):
    recipe = Path(__file__).resolve().parents[1].joinpath("Makefile").read_text().split("\nchapter:")[1]
    line = next(text.strip() for text in recipe.splitlines()[1:] if text.startswith("\t"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "aelab").write_text(f'#!/bin/sh\nexec {sys.executable} -m aelab "$@" --threads 1\n')
    (bin_dir / "aelab").chmod(0o755)
    proc = _killed_in_first_epoch(["--data", slow_npz, "--epochs", 1, "--batch-size", 64, "--threads", 1,
                                   "--out", tmp_path / "runs" / "chapter"], signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["sh", "-c", line.replace("$(BIN)", str(bin_dir))], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming" in done.stdout and (tmp_path / "runs" / "chapter" / "report.md").is_file()


# ---------------------------------------------------------------------------------------------- links, not ours

def test_no_output_is_written_through_a_link(trained_run, subset_npz, tmp_path, capsys, one_thread):
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's own file")
    out = tmp_path / "export"
    out.mkdir()
    (out / "encoder.onnx").symlink_to(victim)
    assert_user_error(aelab("export", trained_run, "--out", out, "--overwrite"), "symbolic link")
    other_run = tmp_path / "other"
    shutil.copytree(trained_run, other_run, ignore=shutil.ignore_patterns(".aelab-lock"))
    before = sorted(p.name for p in other_run.iterdir())
    link = tmp_path / "link"
    link.symlink_to(other_run, target_is_directory=True)
    (tmp_path / "codes.npy").symlink_to(victim)
    for args in (["train", "--data", subset_npz, "--epochs", 1, "--out", link, "--overwrite"],
                 ["export", trained_run, "--out", link, "--overwrite"],
                 ["compare", "pca", "--latent", 2, "--data", subset_npz, "--out", link, "--overwrite"],
                 ["encode", trained_run, "0", "--out", tmp_path / "codes.npy", "--overwrite"]):
        assert_user_error(in_process(args, capsys), "symbolic link")
    assert victim.read_text() == "the user's own file"
    assert sorted(p.name for p in other_run.iterdir()) == before


def test_overwrite_never_deletes_a_folder_aelab_did_not_make(subset_npz, tmp_path, capsys, one_thread):
    foreign = tmp_path / "webpack"
    foreign.mkdir()
    (foreign / "config.json").write_text('{"name": "my webpack config"}')
    assert_user_error(in_process(["train", "--data", subset_npz, "--epochs", 1, "--out", foreign, "--overwrite"],
                                 capsys), "not an aelab run folder")
    assert (foreign / "config.json").read_text() == '{"name": "my webpack config"}'
    assert [p.name for p in foreign.iterdir()] == ["config.json"]


# ---------------------------------------------------------------------------------------------- one line, exit 2

@pytest.fixture(scope="module")
def vector_run(tmp_path_factory, one_thread) -> tuple[Path, Path]:
    from aelab.cli import main

    folder = tmp_path_factory.mktemp("vectors")
    np.save(folder / "vectors.npy", np.random.default_rng(0).random((600, 8), dtype=np.float32))
    assert main(["train", "--data", str(folder / "vectors.npy"), "--epochs", "1", "--threads", "1",
                 "--out", str(folder / "run")]) == 0
    return folder / "vectors.npy", folder / "run"


def test_read_only_outputs_are_one_line(trained_run, subset_npz, tmp_path, capsys, one_thread):
    with contextlib.ExitStack() as mounts:
        def read_only(folder: Path) -> Path:
            folder.mkdir()
            if os.geteuid() == 0:  # root writes through permissions, not onto a read-only file system
                mounts.enter_context(mounted(folder, "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs"))
            else:
                folder.chmod(0o555)
            return folder

        # the first as a real process; the others through cli.main here, as the refusals above
        assert_user_error(aelab("export", trained_run, "--out", read_only(tmp_path / "e")), "cannot write")
        for args in (["compare", "pca", "--latent", 2, "--data", subset_npz, "--out", read_only(tmp_path / "c")],
                     ["encode", trained_run, subset_npz, "--out", read_only(tmp_path / "n") / "codes.npy"]):
            assert_user_error(in_process(args, capsys), "cannot write")


def test_every_refusal_is_one_line(trained_run, vector_run, subset_npz, tmp_path, capsys, one_thread):
    vectors, vrun = vector_run
    a_file = tmp_path / "file"
    a_file.write_text("")
    listed = tmp_path / "listed"
    shutil.copytree(trained_run, listed, ignore=shutil.ignore_patterns(".aelab-lock"))
    (listed / "config.json").write_text("[1, 2]")
    cases = {
        "export under a file": (["export", trained_run, "--out", a_file / "x"], ["cannot write"]),
        "compare under a file": (["compare", "pca", "--latent", 2, "--data", subset_npz, "--out", a_file / "x"],
                                 ["cannot write"]),
        "a vector run on images": (["compare", "--run", f"v={vrun}", "--data", subset_npz, "--out", tmp_path / "c1"],
                                   ["takes inputs 8", "28"]),
        "compare of vectors": (["compare", "--data", vectors, "--run", f"v={vrun}", "--out", tmp_path / "c2"],
                               ["vectors"]),
        "export of a config list": (["export", listed, "--out", tmp_path / "e1"], ["config.json"]),
        "pca at code size 0": (["compare", "pca", "--latent", 0, "--data", subset_npz, "--out", tmp_path / "c3"],
                               ["positive"]),
        "an empty code size": (["compare", "pca", "--latents", "2,,3", "--out", tmp_path / "c4"], ["2,,3"]),
        "one name twice": (["compare", "--run", f"a={trained_run}", "--run", f"a={trained_run}", "--out",
                            tmp_path / "c5"], ["twice"]),
        "in_shape by hand": (["train", "--data", subset_npz, "--set", "model.in_shape=1,2,3", "--out",
                              tmp_path / "r1"], ["in_shape", "data"]),
        "a --set a flag replaces": (["train", "--set", "train.epochs=abc", "--epochs", 1, "--out", tmp_path / "r2"],
                                    ["--epochs", "--set train.epochs=", "give it once"]),
        "a flag and a --set of one setting": (["train", "--data", subset_npz, "--set", "data.path=/etc/passwd", "--out",
                                               tmp_path / "r4"], ["--data", "data.path", "give it once"]),
        "the same in a sweep": (["sweep", "sae", "--data", vectors, "--set", "path=/etc/passwd", "--grid", "k=4",
                                 "--out", tmp_path / "r5"], ["--data", "--set path=", "give it once"]),
        "a negative grid_every a flag replaces": (["train", "--set", "train.grid_every=-1", "--grid-every", 2,
                                                   "--out", tmp_path / "r3"], ["grid_every"]),
    }
    for name, (args, words) in cases.items():
        try:
            assert_user_error(in_process(args, capsys), *words)
        except AssertionError as e:
            raise AssertionError(name) from e
    assert_user_error(aelab(*cases["a vector run on images"][0]), *cases["a vector run on images"][1])
    assert not any((tmp_path / f"r{i}").exists() for i in (1, 2, 3, 4, 5))


def test_outputs_that_are_files_and_runs_that_are_not_the_method_are_refused_before_any_work(trained_run, subset_npz,
                                                                                               tmp_path, capsys,
                                                                                               one_thread):
    a_file = tmp_path / "taken.txt"
    a_file.write_text("the user's own file")
    assert_user_error(in_process(["export", trained_run, "--out", a_file], capsys), "is a file", "--out")
    assert_user_error(in_process(["compare", "pca", "--latent", 2, "--data", subset_npz, "--out", a_file], capsys),
                      "is a file")
    assert a_file.read_text() == "the user's own file"

    latent = json.loads((trained_run / "config.json").read_text())["model"]["latent"]
    line = assert_user_error(in_process(["compare", "ae", "--run", f"ae={trained_run}", "--latent", latent + 1,
                                         "--data", subset_npz, "--out", tmp_path / "c1"], capsys),
                             f"codes of {latent} numbers", f"--latent {latent}")
    assert str(latent + 1) in line
    vae = tmp_path / "vae"
    trained = in_process(["train", "vae", "--data", subset_npz, "--epochs", 1, "--threads", 1, "--out", vae], capsys)
    assert trained.returncode == 0, trained.stderr[-2000:]
    began = time.monotonic()  # refused before pca is fitted or the Frechet classifier trained
    assert_user_error(in_process(["compare", "ae", "pca", "--run", f"ae={vae}", "--data", subset_npz, "--threads", 1,
                                  "--out", tmp_path / "c2"], capsys), "holds a vae model", f"--run vae={vae}")
    assert time.monotonic() - began < 60
    assert not (tmp_path / "c1").exists() and not (tmp_path / "c2").exists()


def test_past_the_file_size_limit_export_is_one_line(trained_run, tmp_path):
    """`ulimit -f 4`: aelab ignores SIGXFSZ, so the write fails (EFBIG) and says so; no byte code is written."""
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    out = tmp_path / "e"
    env = {**os.environ, "PYTHONPATH": str(SRC), "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run([sys.executable, "-m", "aelab", "export", str(trained_run), "--out", str(out)], env=env,
                            capture_output=True, text=True, timeout=120, preexec_fn=limit)
    assert_user_error(result, "cannot write", "encoder.onnx")
    assert [p.name for p in out.iterdir()] == []  # no half file, no temporary one


def test_an_interrupt_at_start_up_is_one_line_and_exit_2(subset_npz, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "aelab", "train", "--data", str(subset_npz), "--epochs", "1",
                             "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    while not (out / "config.json").exists() and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert_user_error(subprocess.CompletedProcess(proc.args, proc.returncode, "", stderr), "interrupted")


def test_a_diverged_resume_leaves_the_runs_settings(trained_run, tmp_path, capsys, one_thread):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns(".aelab-lock"))
    before = (run / "config.json").read_text()
    assert_user_error(in_process(["train", "--resume", run, "--epochs", 5, "--lr", "1e10", "--threads", 1], capsys),
                      "diverged")
    assert (run / "config.json").read_text() == before  # a plain --resume trains at the run's own rate
    assert json.loads(before)["train"]["lr"] == 1e-3
