"""Training a run from start to report: `train` a new run, `resume` a stopped one, `finish` with the test measures,
the loss plot, the models' pictures, report.md and report.html. `build_for` is the one wiring of data to model.

The run is locked for its trainer throughout. Ctrl-C (or SIGTERM), a diverging loss or a full disk leave the last
finished epoch's checkpoint, from which `resume` continues exactly as if never stopped. `loggers`: experiment
trackers ("tensorboard", "mlflow" or trackers.Logger objects) told the config, every epoch and the run's files.
Under torchrun every rank calls these; rank 0 alone writes, prints and logs.
"""

from __future__ import annotations

from pathlib import Path

import torch

from aelab import devices
from aelab.config import RunConfig, set_value
from aelab.errors import UserError
from aelab.evaluation.evaluate import evaluate
from aelab.evaluation.probing import measures_if_labelled
from aelab.flags import check_resumable
from aelab.models import build
from aelab.pictures.charts import plot_losses
from aelab.pictures.images import save_png
from aelab.reports import trackers
from aelab.reports.page import text_contexts, write_run_page
from aelab.reports.report import GridWriter, write_report
from aelab.runs.runfolder import RunFolder, load_model
from aelab.storage import files
from aelab.training import distributed
from aelab.training.train import Callback, ConsolePrinter, Diverged, TrainConfig, Trainer


def build_for(config: RunConfig, data):
    """The model `config` names, made for `data` (its training set, an ImageSet or a VectorSet): the input shape
    and reconstruction loss are the data's (bce for images, mse for vectors), and a model of vectors keeps the
    standardisation they train in. Draws its initial weights from torch's global RNG."""
    config.model.in_shape = data.shape
    config.model.recon_loss = data.recon_loss
    model = build(config.model_name, config.model)
    if data.data_kind == "vectors":
        model.keep_standardisation(data.mean, data.std)
    return model


class RunRecorder(Callback):
    """After every epoch: the metrics, the weights and, last, the checkpoint to resume from. A process killed
    before the checkpoint is replaced trains that epoch again on resume, and rewrites the same files. Settings a
    resume changed go into config.json once an epoch has finished with them: a resume that diverges or is stopped
    leaves the run's settings as they were."""

    def __init__(self, run: RunFolder, config: RunConfig, config_saved: bool = True):
        self.run, self.config, self.config_saved = run, config, config_saved

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        if not self.config_saved:
            self.run.write_config(self.config)
            self.config_saved = True
        self.run.write_metrics(trainer.history)
        self.run.save_weights(trainer.model, self.config, trainer.epoch)
        self.run.save_checkpoint(trainer)


def train(config: RunConfig, *, out: str | Path | None = None, overwrite: bool = False, threads: int | None = None,
          loggers=()) -> int:
    """Train a new run of `config` into `out` (default runs/MODEL, numbered if taken), then `finish` it."""
    loggers = _loggers(loggers)
    _threads(threads)
    train_set, test_set = config.data.load()
    model = new_model(config, train_set)  # before the folder exists: a bad setting leaves nothing behind
    path = Path(out) if out else _free_run_dir(config.model_name)
    devices.barrier()  # every rank has picked the same free folder before rank 0 takes it
    with devices.on_main(lambda: RunFolder.create(path, config, overwrite)) or RunFolder(path) as run:
        trainer = _trainer(run, config, model, train_set, test_set, loggers, config_saved=True)
        ranks = f" on {devices.world_size()} ranks" if devices.world_size() > 1 else ""
        what = "images" if train_set.data_kind == "images" else "vectors of"
        _say(f"training {config.model_name} ({model.num_parameters():,} parameters) on {len(train_set)} {what} "
             f"{'x'.join(map(str, train_set.shape))}, testing on {len(test_set)}; device {trainer.device}{ranks}; "
             f"run folder {run.path}")
        _say(config.describe())
        return _fit(run, config, trainer, test_set, loggers)


def resume(run_dir: str | Path, *, epochs: int | None = None, device: str | None = None,
           changes: dict[str, object] | None = None, threads: int | None = None, loggers=()) -> int:
    """Continue a stopped run from its checkpoint (`epochs`, `device` and `changes` may change the settings named in
    flags.RESUMABLE), then `finish` it."""
    changes = {"train.epochs": epochs, "train.device": device, **(changes or {})}
    check_resumable(changes)  # before the run is touched
    loggers = _loggers(loggers)
    _threads(threads)
    if not Path(run_dir).is_dir():
        raise UserError(f"run folder {run_dir} does not exist; nothing to resume (start it without --resume)")
    with RunFolder.open(run_dir) as run:
        if devices.is_main():  # the lock before reading anything: another trainer may be rewriting it
            run.check()
            run.lock()
        config = run.config()
        for key, value in changes.items():
            if value is not None:  # a run may move: GPU-trained runs resume on a CPU and the other way round
                set_value(config, key, value)
        train_set, test_set = config.data.load()
        # made as a new run's (the checkpoint, if any, then replaces its state): a run stopped before its first
        # checkpoint starts again exactly as it began
        trainer = _trainer(run, config, new_model(config, train_set), train_set, test_set, loggers,
                           config_saved=config.to_dict() == run.config().to_dict())
        restore(run, config, trainer)
        _say(f"resuming {run.path} after epoch {trainer.epoch} of {config.train.epochs}")
        return _fit(run, config, trainer, test_set, loggers)


def restore(run: RunFolder, config: RunConfig, trainer: Trainer) -> None:
    """The trainer as the run's checkpoint left it, then (rank 0, once that is checked) the folder too: metrics and
    grids of later epochs dropped, the weights of its epoch."""
    run.load_checkpoint(trainer)
    if config.train.epochs < trainer.epoch:
        raise UserError(f"{run.path} already holds {trainer.epoch} epochs; --epochs must be at least that")
    if devices.is_main():
        run.write_metrics(trainer.history)
        run.forget_after(trainer.epoch)
        if trainer.epoch and run.weights_epoch() != trainer.epoch:  # a later epoch's, from a process killed
            run.save_weights(trainer.model, config, trainer.epoch)  # before its checkpoint


def finish(run: RunFolder, *, config: RunConfig, trainer: Trainer, test_set, loggers=()) -> None:
    """After the last epoch (rank 0): the test measures into eval.json, the model's pictures, report.md and
    report.html; then the trackers hear the run finished."""
    model = trainer.model
    measures = evaluate(model, test_set)
    measures.update(measures_if_labelled(model, config.data.path, trainer.train_set, test_set))  # labelled activations
    run.write_measures(measures)
    pictures = model.make_pictures(trainer.test_set)
    for name, picture in pictures.items():
        save_png(picture, run.picture(name))
    contexts = None if model.data_kind == "images" else text_contexts(model, config.data.path)
    report = write_report(run, config, model, trainer.history, measures, list(pictures), contexts)
    page = write_run_page(run.path, config, model, test_set, trainer.history, measures, pictures=pictures,
                          contexts=contexts)
    print("test: " + "  ".join(f"{k} {v:.4f}" for k, v in measures.items() if isinstance(v, float)))
    print(f"report: {report} and {page}")
    trackers.finish(loggers, run.path)


def write_page(path: str | Path, out: str | Path | None = None) -> Path:
    """report.html of a finished run, older runs included (`aelab report`)."""
    run, model = RunFolder.open(path), load_model(path)
    config = run.config()
    test = config.data.load_test()
    measures = run.measures() or evaluate(model, test)
    return write_run_page(run.path, config, model, test, run.metrics(), measures, out)


def write_scored_reports(run: RunFolder, result: dict, top, source: str) -> Path:
    """After `aelab score`: the scoring kept in the run with its pictures, then report.md and report.html rebuilt
    with them."""
    from aelab.evaluation.anomaly import write_scored
    from aelab.reports.report import anomaly_curves, anomaly_histogram

    write_scored(run, result, source)
    save_png(anomaly_histogram(result["train_scores"], result["scores"], result["threshold"]), run.anomaly_plot_path)
    if result["positive"] is not None:
        save_png(anomaly_curves(result["scores"], result["positive"], result["measures"]), run.anomaly_curves_path)
    else:
        run.anomaly_curves_path.unlink(missing_ok=True)  # an earlier scoring's, with labels this one has not
    if top is not None:
        save_png(top, run.anomaly_top_path)
    model, config = load_model(run.path), run.config()
    measures = run.measures() or evaluate(model, config.data.load_test())
    write_report(run, config, model, run.metrics(), measures, [n for n in model.pictures if run.picture(n).is_file()])
    return write_page(run.path)


def _loggers(loggers) -> list[trackers.Logger]:
    """Made on every rank before anything is written (a missing package stops them all, leaving nothing behind);
    kept by rank 0 alone."""
    made = trackers.make(loggers)
    return made if devices.is_main() else []


def _threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


def _say(text: str) -> None:
    if devices.is_main():
        print(text)


def new_model(config: RunConfig, train_set):
    """A new run's model: seeded, built for the data, and given its data-dependent start (an SAE's b_dec) from the
    first training inputs and the steps the run will take. Made once its settings are checked and this process
    has its device (under torchrun: once it has joined the process group)."""
    config.train.check()
    distributed.setup(devices.parse_device(config.train.device))
    torch.manual_seed(config.train.seed)
    model = build_for(config, train_set)
    steps = config.train.epochs * -(-len(train_set) // config.train.batch_size)
    model.initialise(train_set.floats(slice(0, 4096)), steps, len(train_set))
    return model


def _trainer(run: RunFolder, config: RunConfig, model, train_set, test_set, loggers, config_saved: bool) -> Trainer:
    """A trainer that prints, draws grids of images, tells the loggers and, last, records the epoch in the run:
    whatever an interrupted epoch wrote, its resume writes again."""
    for logger in loggers:
        logger.start(run.path, config)
    callbacks = [ConsolePrinter()]
    if train_set.data_kind == "images":  # vectors have no pictures: their measures tell
        callbacks.append(GridWriter(run, config.train.grid_every))
    callbacks += [*loggers, RunRecorder(run, config, config_saved)]
    return Trainer(model, train_set, test_set, config.train, callbacks)


def _fit(run: RunFolder, config: RunConfig, trainer: Trainer, test_set, loggers) -> int:
    """Train to the configured epochs, plot the losses however it ends, and finish the run if it did."""
    try:
        trainer.fit()
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (cli.main turns it into one)
        stopped = UserError(f"interrupted: {_go_on(run)}")
    except Diverged as e:
        stopped = Diverged(f"{e}: {_go_on(run, f' --lr {min(config.train.lr / 10, TrainConfig.lr):g}')}")
    except files.WriteError as e:  # no loss plot either: the disk refuses
        trackers.finish(loggers, run.path, "FAILED")
        raise files.WriteError(f"{e}. {_go_on(run)}") from None
    except BaseException:
        trackers.finish(loggers, run.path, "FAILED")
        raise
    else:
        stopped = None
    main = devices.is_main()
    if main:
        plot_losses(trainer.history, run.loss_plot_path)
    if stopped:  # the trackers hear how it ended
        trackers.finish(loggers, run.path, "KILLED" if not isinstance(stopped, Diverged) else "FAILED")
        raise stopped from None
    if main:
        finish(run, config=config, trainer=trainer, test_set=test_set, loggers=loggers)
    distributed.finish()
    return 0


def _free_run_dir(model_name: str) -> Path:
    base = Path("runs") / model_name
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{model_name}-{n}")
    return path


def _go_on(run: RunFolder, settings: str = "") -> str:
    """How to go on from what the run's checkpoint holds."""
    if run.saved_epoch:
        return (f"{run.path} holds epoch {run.saved_epoch}; continue with `aelab train --resume {run.path}"
                f"{settings}`")
    return f"no epoch of {run.path} finished; start it again with `aelab train --resume {run.path}{settings}`"
