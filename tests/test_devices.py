"""The device setting and torchrun's ranks (aelab.devices): a device read in one place, random draws on the device
asked, torchrun's variables checked before anything starts."""

from __future__ import annotations

import time

import pytest
import torch

from aelab.devices import parse_device, resolve_device
from aelab.errors import UserError
from conftest import LOOPBACK
from support.process import assert_user_error, in_process


@pytest.mark.parametrize("name, device", [("auto", None), ("cpu", torch.device("cpu")),
                                          ("cuda:1", torch.device("cuda", 1)), ("mps", torch.device("mps"))])
def test_a_device_setting_is_read_for_its_form_alone(name, device):
    assert parse_device(name) == device  # cuda:1 reads on a machine without it: a GPU run still loads here
    assert resolve_device(parse_device("cpu")) == torch.device("cpu")
    for bad in ("gpu", "cuda:x", "tpu", ""):
        with pytest.raises(UserError, match="unknown device .*use --device auto, cpu"):
            parse_device(bad)


def test_random_draws_land_on_the_device_asked_from_either_generator():
    from aelab.devices import batch_draw, draw, sharded

    g = torch.Generator().manual_seed(0)
    a = draw(torch.randn, (3, 2), torch.device("cpu"), g)
    assert torch.equal(a, torch.randn((3, 2), generator=torch.Generator().manual_seed(0)))
    torch.manual_seed(5)
    whole = batch_draw(6, lambda m: torch.randn(m, 2))
    torch.manual_seed(5)
    with sharded(2, 6):  # one process: the shard is the whole batch, as it must be
        assert torch.equal(batch_draw(6, lambda m: torch.randn(m, 2)), whole)


@pytest.mark.parametrize("env, words", [
    ({"WORLD_SIZE": "abc"}, ["WORLD_SIZE='abc'", "whole number"]),
    ({"WORLD_SIZE": "-3"}, ["WORLD_SIZE='-3'"]),
    ({"WORLD_SIZE": "0"}, ["WORLD_SIZE='0'"]),
    ({"WORLD_SIZE": "2"}, ["RANK and MASTER_ADDR and MASTER_PORT", "torchrun"]),
    ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_PORT": "29400"}, ["MASTER_ADDR is not set"]),
    ({"WORLD_SIZE": "2", "RANK": "5", **LOOPBACK}, ["RANK=5", "0 to 1"]),
    ({"WORLD_SIZE": "2", "RANK": "-1", **LOOPBACK}, ["RANK='-1'"]),
    ({"RANK": "1"}, ["RANK is set without WORLD_SIZE"]),
    ({"LOCAL_RANK": "3"}, ["LOCAL_RANK is set without WORLD_SIZE"]),
    ({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "x", **LOOPBACK}, ["LOCAL_RANK='x'"]),
    ({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "1", **LOOPBACK}, ["LOCAL_RANK=1 is above RANK=0"]),
    ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "99999"}, ["MASTER_PORT='99999'"]),
    ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "http"}, ["MASTER_PORT='http'"]),
    ({"WORLD_SIZE": "2", "RANK": "0", **LOOPBACK, "AELAB_DIST_TIMEOUT": "0"}, ["AELAB_DIST_TIMEOUT='0'"]),
    ({"WORLD_SIZE": "2", "RANK": "0", **LOOPBACK, "AELAB_DIST_TIMEOUT": "nan"}, ["AELAB_DIST_TIMEOUT='nan'"]),
])
def test_wrong_or_incomplete_torchrun_variables_are_one_line_at_once(env, words, clean_env, subset_npz, tmp_path,
                                                                     capsys, one_thread):
    """Read when `aelab train` starts: run through cli.main in this process, its environment patched."""
    for name, value in env.items():
        clean_env.setenv(name, value)
    started = time.monotonic()
    result = in_process(["train", "--data", subset_npz, "--epochs", 1, "--threads", 1, "--out", tmp_path / "run"],
                        capsys)
    assert_user_error(result, *words)
    assert time.monotonic() - started < 10  # refused before any data is read or any rank waited for
    assert not (tmp_path / "run").exists()
