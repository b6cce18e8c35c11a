"""A run from start to finish (experiments.pipeline): a resume keeps the run's settings and needs a run to resume."""

from __future__ import annotations

from support.process import assert_user_error, in_process


def test_resume_refuses_changed_settings_and_missing_runs(trained_run, tmp_path, capsys):
    assert_user_error(in_process(["train", "--resume", trained_run, "--latent", "5"], capsys), "model.latent")
    assert_user_error(in_process(["train", "--resume", tmp_path / "nothing"], capsys), "does not exist")
