"""Nothing lost: real `aelab train` processes killed at any instant, stopped by SIGTERM, diverging, racing a second
trainer, running out of disk or permission, pointed at folders that are not theirs or hold links. Each ends in one
line and a run that goes on. Refusals that need no process of their own (a lock held by another process, a link, a
read-only folder) run `cli.main` in this process."""

from __future__ import annotations

import contextlib
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from aelab.errors import UserError
from aelab.models import MODELS, build, picture_names
from aelab.runs.runfolder import RunFolder, load_model
from aelab.storage import tensorfile
from aelab.training.train import Diverged
from support.crashes import command, crash_and_resume, differences, random_instants, signal_at, start, temporaries
from support.folders import mounted
from support.models import stepper
from support.process import aelab, assert_user_error, in_process

LOCK = RunFolder(".").lock_path.name


def copy_run(run: Path, to: Path) -> Path:
    shutil.copytree(run, to, symlinks=True, ignore=shutil.ignore_patterns(LOCK))
    return to


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != LOCK}


def checkpoint_epoch(run: Path) -> int:
    return json.loads(tensorfile.metadata(run / "checkpoint.safetensors")["trainer"])["epoch"]


def records(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in RunFolder(run).metrics()]


# ---------------------------------------------------------------------------------------------- crashes

def test_killed_at_any_instant_a_run_resumes_to_the_same_run(subset_npz, trained_run, tmp_path):
    """SIGKILL inside the first checkpoint write, then at random instants and inside random files' writes (fixed
    seed); each time resumed (or started again if no epoch was saved), as the user would. The finished run equals
    the uninterrupted fixture run: test measures, weights, checkpoint, metrics, grids."""
    out = tmp_path / "killed"
    instants = [("writing", "checkpoint.safetensors")] + random_instants(random.Random(1), 4, 8.0)
    hits = crash_and_resume(subset_npz, out, 3, instants)
    assert differences(out, trained_run) == [], hits
    assert any("left a temporary file" in hit for hit in hits), hits  # killed mid-write at least once...
    assert temporaries(out) == []  # ...and the next start swept it away


def test_sigterm_stops_like_ctrl_c_even_mid_checkpoint(subset_npz, trained_run, tmp_path, capsys, one_thread):
    out = tmp_path / "term"
    argv = command(subset_npz, out, 1000) + ["--grid-every", "0"]
    what, code, stderr = signal_at(argv, out, ("writing", "checkpoint.safetensors", 2), signal.SIGTERM)
    assert what == "killed writing checkpoint.safetensors"
    line = assert_user_error(subprocess.CompletedProcess([], code, "", stderr), "interrupted", "--resume")
    done = checkpoint_epoch(out)  # the write it stopped was abandoned whole, or had just finished
    assert done in (1, 2) and f"holds epoch {done};" in line
    assert temporaries(out) == []  # the process removed its own half-written file
    resumed = in_process(["train", "--resume", out, "--epochs", done + 1, "--threads", 1], capsys)
    assert resumed.returncode == 0, resumed.stderr
    assert records(out) == records(trained_run)[:done + 1]


def test_a_diverging_run_keeps_its_last_good_epoch_and_resumes_with_a_lower_lr(trained_run, tmp_path, capsys,
                                                                               one_thread):
    run = copy_run(trained_run, tmp_path / "run")
    before = snapshot(run)
    # refused at the start, before anything is written (config.json included)
    assert_user_error(in_process(["train", "--resume", run, "--epochs", 4, "--lr", "inf"], capsys), "train.lr", "finite")
    assert_user_error(in_process(["train", "--resume", run, "--epochs", 2], capsys), "holds 3 epochs")
    assert snapshot(run) == before

    blown = aelab("train", "--resume", run, "--epochs", 4, "--set", "train.lr=1e30", "--threads", 1)
    line = assert_user_error(blown, "diverged", "epoch 4", "step", "holds epoch 3", f"--resume {run} --lr 0.001")
    kept = {k: v for k, v in before.items() if k != "config.json"}
    assert {k: v for k, v in snapshot(run).items() if k != "config.json"} == kept, line  # nothing NaN saved
    assert json.loads((run / "config.json").read_text())["train"]["lr"] == 1e-3  # settings of no finished epoch

    again = in_process(["train", "--resume", run, "--epochs", 4, "--lr", "5e-4", "--threads", 1], capsys)
    assert again.returncode == 0, again.stderr
    assert [r["epoch"] for r in RunFolder(run).metrics()] == [1, 2, 3, 4]
    assert json.loads((run / "config.json").read_text())["train"]["lr"] == 5e-4
    trainer = json.loads(tensorfile.metadata(run / "checkpoint.safetensors")["trainer"])
    assert trainer["optimizers"][0]["param_groups"][0]["lr"] == 5e-4  # the optimiser runs at the new rate
    assert RunFolder(run).metrics()[-1]["test_loss"] < RunFolder(run).metrics()[-2]["test_loss"]


# ---------------------------------------------------------------------------------------------- one writer

def test_one_trainer_per_run_and_readers_see_whole_epochs(subset_npz, trained_run, tmp_path, capsys, one_thread):
    run = copy_run(trained_run, tmp_path / "run")
    first = start(command(subset_npz, run, 0, resume=True) + ["--epochs", "1000"])
    try:
        lock = run / LOCK
        deadline = time.monotonic() + 120
        while not (lock.is_file() and lock.read_text().strip() == str(first.pid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lock.read_text().strip() == str(first.pid), first.stderr
        for argv in (["--resume", run], ["--data", subset_npz, "--epochs", 1, "--out", run, "--overwrite"]):
            assert_user_error(in_process(["train", *argv], capsys), "being trained by process", str(first.pid))
        # a reader never locks: while epochs finish, the weights it reads are always one whole epoch's
        seen = []
        while len(set(seen)) < 2 and time.monotonic() < deadline:
            load_model(run)
            seen.append(int(tensorfile.metadata(run / "model.safetensors")["epoch"]))
        assert len(set(seen)) >= 2 and seen == sorted(seen), seen
    finally:
        first.kill()  # SIGKILL: the kernel drops its lock
        first.communicate()
    done = checkpoint_epoch(run)
    resumed = in_process(["train", "--resume", run, "--epochs", done, "--threads", 1], capsys)  # the dead holder never blocks
    assert resumed.returncode == 0, resumed.stderr
    assert temporaries(run) == []


# ---------------------------------------------------------------------------------------------- full disk, read-only

def test_a_full_disk_is_one_line_and_the_checkpoint_survives(trained_run, tmp_path):
    """A real 64 MiB tmpfs holding the run, shrunk to leave 3 MiB: the next checkpoint (5.6 MiB) cannot be
    written."""
    disk = tmp_path / "disk"
    disk.mkdir()
    with mounted(disk, "-t", "tmpfs", "-o", "size=64m", "tmpfs"):
        run = copy_run(trained_run, disk / "run")
        before = (run / "checkpoint.safetensors").read_bytes()
        fs = os.statvfs(disk)
        used_kib = (fs.f_blocks - fs.f_bfree) * fs.f_frsize // 1024
        subprocess.run(["mount", "-o", f"remount,size={used_kib + 3072}k", str(disk)], check=True)
        full = aelab("train", "--resume", run, "--epochs", 4, "--threads", 1)
        assert_user_error(full, "cannot write", "checkpoint.safetensors", "no space left", "holds epoch 3",
                          f"--resume {run}")
        assert (run / "checkpoint.safetensors").read_bytes() == before
        assert temporaries(run) == []


def test_past_the_file_size_limit_one_line_then_the_run_goes_on(trained_run, tmp_path, capsys, one_thread):
    """`ulimit -f 3072` (EFBIG, with SIGXFSZ ignored by aelab): the checkpoint is the first file too big."""
    run = copy_run(trained_run, tmp_path / "run")
    before = (run / "checkpoint.safetensors").read_bytes()

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (3 << 20, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    assert_user_error(aelab("train", "--resume", run, "--epochs", 4, "--threads", 1, preexec_fn=limit),
                      "cannot write", "checkpoint.safetensors", "too large", "holds epoch 3")
    assert (run / "checkpoint.safetensors").read_bytes() == before and temporaries(run) == []
    resumed = in_process(["train", "--resume", run, "--epochs", 4, "--threads", 1], capsys)
    assert resumed.returncode == 0, resumed.stderr
    assert [r["epoch"] for r in RunFolder(run).metrics()] == [1, 2, 3, 4] and checkpoint_epoch(run) == 4


def test_a_read_only_run_folder_is_one_line_and_left_alone(trained_run, subset_npz, tmp_path, capsys, one_thread):
    run = copy_run(trained_run, tmp_path / "run")
    before = snapshot(run)
    if os.geteuid() == 0:  # root ignores permissions: a read-only bind mount
        context = mounted(run, "--bind", str(run))
    else:
        context = contextlib.nullcontext()
        for folder in (run, run / "grids"):
            folder.chmod(0o555)
    with context:
        if os.geteuid() == 0:
            subprocess.run(["mount", "-o", "remount,bind,ro", str(run)], check=True)
        assert_user_error(in_process(["train", "--resume", run, "--epochs", 4], capsys), "cannot write",
                          "make that folder writable")
        assert_user_error(in_process(["train", "--data", subset_npz, "--epochs", 1, "--out", run / "sub"], capsys),
                          "cannot write")
        assert snapshot(run) == before
    for folder in (run, run / "grids"):
        folder.chmod(0o755)


# ---------------------------------------------------------------------------------------------- not ours

def test_no_write_follows_a_symbolic_link_out_of_a_run(trained_run, subset_npz, tmp_path, capsys, one_thread):
    victim = tmp_path / "victim.safetensors"
    victim.write_bytes(b"someone else's file")
    run = copy_run(trained_run, tmp_path / "run")
    (run / "model.safetensors").unlink()
    (run / "model.safetensors").symlink_to(victim)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    grids = copy_run(trained_run, tmp_path / "grids_link")
    shutil.rmtree(grids / "grids")
    (grids / "grids").symlink_to(elsewhere, target_is_directory=True)
    for folder in (run, grids):
        assert_user_error(in_process(["train", "--resume", folder, "--epochs", 4], capsys), "symbolic link")
        assert_user_error(in_process(["train", "--data", subset_npz, "--epochs", 1, "--out", folder, "--overwrite"],
                                     capsys), "symbolic link")
    assert victim.read_bytes() == b"someone else's file" and list(elsewhere.iterdir()) == []


def test_torn_or_damaged_metrics_lines(trained_run, tmp_path):
    run = copy_run(trained_run, tmp_path / "run")
    whole = (run / "metrics.jsonl").read_text()
    (run / "metrics.jsonl").write_text(whole + '{"epoch": 4, "train_lo')  # a run killed mid-append, before aelab
    assert [r["epoch"] for r in RunFolder(run).metrics()] == [1, 2, 3]  # wrote metrics whole: the torn line is left out
    (run / "metrics.jsonl").write_text('{"epoch": 1}\n{"epo\n' + whole)
    with pytest.raises(UserError, match="line 2 is not an epoch's record"):
        RunFolder(run).metrics()


def test_every_models_pictures_are_names_aelab_owns(fashion):
    test = fashion[1].subset(20)
    for name, cls in MODELS.items():
        config = cls.Config(hidden=(16,), latent=2)
        if hasattr(config, "k"):  # an SAE keeps at most its latent's units
            config.k = 1
        model = build(name, config)
        assert set(model.make_pictures(test)) <= set(cls.pictures) <= set(picture_names()), name


def test_non_finite_weights_stop_an_epoch_even_when_its_loss_was_finite():
    model = build("ae", MODELS["ae"].Config(hidden=(16,), latent=2))
    trainer = stepper(model)
    trainer.check_finite(1, 6, last=True)  # finite: nothing to say
    with torch.no_grad():
        next(model.parameters())[0, 0] = float("inf")  # as a step on an infinite gradient leaves it
    trainer.check_finite(1, 5)  # mid-epoch only the losses are watched
    with pytest.raises(Diverged, match="in epoch 1 by step 6"):
        trainer.check_finite(1, 6, last=True)  # at the epoch's end, before anything is saved, the weights too
