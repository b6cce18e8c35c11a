"""The owners of aelab's folders (storage.folders): an owner writes only what it declares, never through a link, and
replaces only what aelab wrote."""

from __future__ import annotations

import numpy as np

from support.process import assert_user_error, in_process


def test_the_files_are_aelabs_alone(trained_run, tmp_path, capsys):
    """A link among the three files, or a file aelab did not write, is never replaced, even with --overwrite; a set
    aelab wrote is (cheap: every refusal comes before a batch is read)."""
    from support.folders import snapshot

    args = ["activations", trained_run, "--layer", "encoder.7", "--split", "test", "--overwrite", "--out"]
    np.save(tmp_path / "target.npy", np.zeros(3))
    for name in ("acts.npy", "acts.index.npy", "acts.json"):
        folder = tmp_path / name.replace(".", "_")
        folder.mkdir()
        (folder / name).symlink_to(tmp_path / "target.npy")
        assert_user_error(in_process([*args, folder / "acts.npy"], capsys), "symbolic link", name)
        assert (folder / name).is_symlink()
    (tmp_path / "linked").symlink_to(tmp_path / "acts_npy", target_is_directory=True)
    assert_user_error(in_process([*args, tmp_path / "linked" / "acts.npy"], capsys), "symbolic link", "linked")
    mine = tmp_path / "mine"
    mine.mkdir()
    np.save(mine / "acts.npy", np.ones(5))  # the user's own file: no acts.json of aelab's beside it
    before = snapshot(mine)
    assert_user_error(in_process([*args, mine / "acts.npy"], capsys), "acts.json", "will not replace")
    assert snapshot(mine) == before and np.load(tmp_path / "target.npy").tolist() == [0, 0, 0]
    assert in_process([*args[:-2], "--out", tmp_path / "ours.npy"], capsys).returncode == 0
    assert in_process([*args, tmp_path / "ours.npy"], capsys).returncode == 0  # aelab's own set: replaced
    assert np.load(tmp_path / "ours.npy").shape == (1000, 20)
    assert not list(tmp_path.glob(".*aelab-tmp"))
