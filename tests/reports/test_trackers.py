"""Experiment trackers: a real training run logged to TensorBoard and MLflow, read back with TensorBoard's own
event reader and MLflow's client; a missing package is one clear error before anything is written."""

from __future__ import annotations

import json
import sys

import pytest

from aelab.errors import UserError
from aelab.experiments.pipeline import train
from aelab.runs.settings import resolve

pytestmark = pytest.mark.usefixtures("one_thread")


def test_tensorboard_and_mlflow_read_back(subset_npz, tmp_path, monkeypatch):
    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    store = f"file://{tmp_path / 'mlruns'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps its file store for tests like this
    run = tmp_path / "run"
    config = resolve("vae", None, {"data.path": str(subset_npz), "train.epochs": 2, "model.latent": 4,
                                       "train.train_eval_size": 500, "model.iwae_k": 2})
    assert train(config, out=run, loggers=["tensorboard", "mlflow", "tensorboard"]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    numeric = [k for k in records[0] if k != "epoch"]
    assert set(events.Tags()["scalars"]) == set(numeric)  # every measure, the VAE's recon and kl included
    assert {"test_recon", "test_kl", "test_psnr", "train_eval_loss"} <= set(numeric)
    for key in ("test_loss", "test_mse", "train_kl"):
        scalars = events.Scalars(key)
        assert [s.step for s in scalars] == [r["epoch"] for r in records]
        assert [s.value for s in scalars] == pytest.approx([r[key] for r in records], rel=1e-6)  # float32 in events
    grids = events.Images("reconstructions")
    assert [g.step for g in grids] == [1, 2] and (grids[0].width, grids[0].height) == (280, 280)
    assert grids[-1].encoded_image_string.startswith(b"\x89PNG")

    client = MlflowClient(store)
    (found,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert found.info.status == "FINISHED" and found.info.run_name == "run"
    assert found.data.params["model_name"] == "vae" and found.data.params["model.latent"] == "4"
    assert found.data.params["model.beta"] == "1.0"
    history = sorted((m.step, m.value) for m in client.get_metric_history(found.info.run_id, "test_loss"))
    assert history == [(r["epoch"], r["test_loss"]) for r in records]
    artifacts = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert {"model.safetensors", "metrics.jsonl", "eval.json", "report.md", "tensorboard", "grids"} <= artifacts


@pytest.mark.parametrize("name, extra", [("tensorboard", "tensorboard"), ("mlflow", "mlflow")])
def test_missing_package_is_one_clear_error_and_no_run_folder(name, extra, subset_npz, tmp_path, monkeypatch):
    blocked = "torch.utils.tensorboard" if name == "tensorboard" else "mlflow"
    monkeypatch.setitem(sys.modules, blocked, None)  # import fails as if not installed
    config = resolve("ae", None, {"data.path": str(subset_npz), "train.epochs": 1})
    with pytest.raises(UserError, match=rf"pip install 'aelab\[{extra}\]'"):
        train(config, out=tmp_path / "run", loggers=[name])
    assert not (tmp_path / "run").exists()


def test_log_flag_is_parsed_repeatable_and_checked():
    from aelab.cli import build_parser

    args = build_parser().parse_args(["train", "--log", "tensorboard", "--log", "mlflow"])
    assert args.log == ["tensorboard", "mlflow"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--log", "wandb"])
