"""The chapter's figure 12.3 and one leaderboard for every method: autoencoders from the registry, PCA and
logistic PCA, at one or several code sizes, written into a comparison folder (storage.folders.CompareFolder says
what it holds). A comparison stopped part way is finished by the same command: finished runs and fits are reused,
unfinished runs resumed, and every measure comes out as an uninterrupted comparison's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from aelab.data.datasets import ImageSet
from aelab.data.load import DataConfig
from aelab.errors import UserError
from aelab.evaluation.baselines import BASELINES, load_baseline
from aelab.evaluation.frechet import IMAGE_SHAPE, feature_classifier
from aelab.evaluation.samplers import COMPONENTS
from aelab.evaluation.evaluate import knn_accuracy, linear_probe_accuracy, on_device_of, reconstruction_metrics
from aelab.evaluation.generation import EVAL_SEED, SAMPLES, frechet_floor, measure_sampler
from aelab.reports import report as reports
from aelab.reports.page import write_compare_page
from aelab.storage import files
from aelab.storage.folders import CompareFolder

DEFAULT_METHODS = ("ae", "logistic_pca", "pca")
LABELS = {"ae": "autoencoder", "logistic_pca": "logistic PCA", "pca": "PCA"}
COLUMNS = ("method", "sampler", "latent", "sse_per_image", "mse", "bce", "nll", "nll_k", "frechet", "frechet_floor",
           "precision", "recall", "density", "coverage", "parameters", "train_seconds", "epochs", "knn_accuracy",
           "probe_accuracy")
SAMPLE_MEASURES = ("frechet", "precision", "recall", "density", "coverage")


def method_names() -> list[str]:
    from aelab.models import MODELS

    return [*MODELS, *BASELINES]


@dataclass
class Fitted:
    """A trained model or fitted baseline, ready to measure."""

    name: str
    latent: int
    model: object
    train_seconds: float
    epochs: int | None = None
    run: Path | None = None  # the run folder it came from, where a gmm sampler looks for its kept mixture
    keep: bool = False       # whether a mixture fitted here is kept there (compare's own runs, not the user's)


# ---------------------------------------------------------------------------------------------- training

def fit_baseline(name: str, latent: int, train: ImageSet, folder: CompareFolder, data_key: str) -> Fitted:
    """Fit PCA or logistic PCA, or reuse the fit saved in the folder from the same data."""
    path = folder.baseline(name, latent)
    if path.is_file():
        model, meta = load_baseline(path)
        if meta.get("data") == data_key:
            print(f"compare: reusing {path}", flush=True)
            return Fitted(name, latent, model, float(meta["fit_seconds"]))
    print(f"compare: fitting {name} with {latent} components on {len(train)} images", flush=True)
    began = time.perf_counter()
    model = BASELINES[name](latent).fit(train)
    seconds = time.perf_counter() - began
    model.save(path, fit_seconds=f"{seconds:.3f}", data=data_key)
    return Fitted(name, latent, model, seconds)


def train_model(name: str, latent: int, folder: CompareFolder, data: str | None, epochs: int | None,
                threads: int | None, device: str = "auto") -> Fitted:
    """Train a registered model by the run machinery into the folder's runs/NAME-kK; a finished run is reused and
    an unfinished or shorter one resumed (to `epochs`), its end-of-run files included."""
    from aelab.experiments.pipeline import resume, train
    from aelab.runs.runfolder import RunFolder
    from aelab.runs.settings import resolve

    run = RunFolder(folder.run(name, latent))
    run_dir = run.path
    overrides = {"model.latent": latent, "data.path": data, "train.grid_every": 10, "train.device": device}
    if epochs is not None:
        overrides["train.epochs"] = epochs
    config = resolve(name, None, overrides)
    if run.checkpoint_path.is_file():
        saved = RunFolder.open(run_dir).config()
        if saved.data.path != data or saved.model.latent != latent:
            raise UserError(f"{run_dir} was trained on other data or another code size; "
                            "remove it or pick another --out")
        done = run.metrics()
        if not done or done[-1]["epoch"] < config.train.epochs or not run.page_path.is_file():  # report.html: last
            resume(run_dir, epochs=config.train.epochs, threads=threads, device=device)
        else:
            print(f"compare: reusing {run_dir} ({done[-1]['epoch']} epochs)", flush=True)
    else:
        train(config, out=run_dir, overwrite=run_dir.exists(), threads=threads)
    fitted = load_run(name, run_dir, device)
    fitted.keep = True
    return fitted


def load_run(name: str, run_dir: str | Path, device: str = "auto", shape: tuple | None = None) -> Fitted:
    """A trained run folder (from `aelab train` or an earlier compare), or a baseline saved by compare, as a
    method named `name`; one that takes inputs of another `shape` than the data's, or named after a method it is
    not (an `ae` row that holds a VAE), is refused."""
    from aelab.models import MODELS
    from aelab.runs.runfolder import RunFolder, load_model

    def check(model) -> None:
        if shape is not None and model.in_shape != tuple(shape):
            raise UserError(f"--run {name}={run_dir} takes inputs {'x'.join(map(str, model.in_shape))}, but the data "
                            f"are {'x'.join(map(str, shape))}; give --data it was trained on")
        named = {**MODELS, **BASELINES}
        if name in named and model.title != named[name].__name__:
            real = next((n for n, cls in named.items() if cls.__name__ == model.title), model.title)
            raise UserError(f"--run {name}={run_dir} holds a {real} model, not {name}; name it --run {real}={run_dir} "
                            "(or any name that is not a method's)")

    if Path(run_dir).is_file():
        try:
            model, meta = load_baseline(run_dir)
        except UserError:
            pass  # not a baseline: a model.safetensors file
        else:
            check(model)
            return Fitted(name, model.code_size, model, float(meta.get("fit_seconds", 0)))
    model = load_model(run_dir, device)
    check(model)
    history = RunFolder(run_dir).metrics() if Path(run_dir).is_dir() else []
    # its code's width, what --latent set (a VQ-VAE's grid holds vectors of that width)
    return Fitted(name, model.code_shape[0], model, sum(r["seconds"] for r in history),
                  history[-1]["epoch"] if history else None, Path(run_dir) if Path(run_dir).is_dir() else None)


# ---------------------------------------------------------------------------------------------- measuring

@torch.no_grad()
def _codes(model, images: ImageSet, batch_size: int = 5000) -> torch.Tensor:
    model.eval()
    return torch.cat([torch.as_tensor(model.encode(x)).reshape(len(x), -1) for x in images.batches(batch_size)])


def measure(fitted: Fitted, train: ImageSet, test: ImageSet) -> dict:
    """The measures of one method, whatever it samples with: test reconstruction errors, the importance-sampled
    NLL of a likelihood model (its own estimator and K), size, training time, and kNN and linear-probe accuracy of
    codes (when the data has labels)."""
    model = fitted.model.eval()
    errors = reconstruction_metrics(model, test)
    own = model.measures(on_device_of(model, test))
    row = {**dict.fromkeys(COLUMNS), "method": fitted.name, "latent": fitted.latent,
           **{k: errors[k] for k in ("sse_per_image", "mse", "bce")}, "nll": own.get("iwae_nll"),
           "nll_k": own.get("iwae_k"), "parameters": model.num_parameters(),
           "train_seconds": round(fitted.train_seconds, 2), "epochs": fitted.epochs}
    if train.labels is not None and test.labels is not None:
        train_codes, test_codes = _codes(model, train), _codes(model, test)
        row["knn_accuracy"] = knn_accuracy(train_codes, train.labels, test_codes, test.labels)
        row["probe_accuracy"] = linear_probe_accuracy(train_codes, train.labels, test_codes, test.labels)
    return row


def sample_rows(fitted: Fitted, row: dict, samplers: list[str] | None, train: ImageSet, test: ImageSet,
                out: CompareFolder, classifier=None, samples: int = SAMPLES, components: int | None = None) -> list[dict]:
    """One row per sampler the method can use (of `samplers`, or its own default), each with its measures against
    the test images when there is a classifier, and a 10x10 grid of its samples in `out`; the row as it is when the
    method can use none of them."""
    from aelab.evaluation.samplers import SAMPLERS, default_sampler
    from aelab.pictures.images import save_png, tile
    from aelab.runs.runfolder import run_sampler

    model = fitted.model
    usable = [name for name in (samplers or [default_sampler(model)]) if SAMPLERS[name].cannot(model) is None]
    rows = []
    for name in usable:
        sampler = run_sampler(model, name, fitted.run, components if name == "gmm" else None, fitted.keep, train)
        print(f"compare: sampling {fitted.name} at {fitted.latent} by {sampler.describe()}", flush=True)
        save_png(tile(sampler.draw(100, torch.Generator().manual_seed(EVAL_SEED)).cpu(), 10, 10),
                 out.samples(fitted.name, fitted.latent, name))
        measured = measure_sampler(sampler, classifier, test, samples=samples) if classifier is not None else {}
        rows.append({**row, "sampler": name, **{k: measured.get(k) for k in SAMPLE_MEASURES}})
    return rows or [row]


# ---------------------------------------------------------------------------------------------- pictures

def figure_images(test: ImageSet, count: int = 10) -> torch.Tensor:
    """The test images of the figure: the first of each class when labelled, else the first `count`."""
    if test.labels is None:
        return test.floats(slice(0, count))
    firsts = [int((test.labels == c).nonzero()[0]) for c in test.labels.unique()[:count].tolist()]
    return test.floats(torch.tensor(firsts))


def write_figure(fitted: list[Fitted], real: torch.Tensor, path: Path) -> Path:
    """Figure 12.3: a row of real test images, then one labelled row per method for the same images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from aelab.pictures.images import stacked_rows

    rows = [real] + [torch.as_tensor(f.model.reconstruct(real)).reshape(real.shape) for f in fitted]
    labels = ["real test images"] + [f"{LABELS.get(f.name, f.name)}" for f in fitted]
    grid = stacked_rows(rows)
    h = real.shape[2]
    fig, ax = plt.subplots(figsize=(grid.shape[1] / 40 + 1.6, grid.shape[0] / 40 + 0.3))
    ax.imshow(grid, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.set_yticks([i * (h + 2) + h / 2 for i in range(len(rows))], labels)
    ax.set_xticks([])
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_title(f"{fitted[0].latent}-number codes" if fitted else "", fontsize=9)
    fig.tight_layout()
    with files.atomic(path) as f:
        fig.savefig(f, format="png", dpi=150, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_error_vs_latent(rows: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = sorted((r["latent"], r["sse_per_image"]) for r in rows if r["method"] == method)
        ax.plot(*zip(*mine), "o-", label=LABELS.get(method, method))
    ax.set(xscale="log", xlabel="code size", ylabel="test squared error per image")
    latents = sorted({r["latent"] for r in rows})
    ax.set_xticks(latents, [str(k) for k in latents])
    ax.minorticks_off()
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with files.atomic(path) as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------- tables

def _cell(value, column: str) -> str:
    if value is None:
        return ""
    if column in ("sse_per_image", "nll", "frechet", "frechet_floor", "train_seconds"):
        return f"{value:.2f}"
    if column in ("mse", "bce", "knn_accuracy", "probe_accuracy", "precision", "recall", "density", "coverage"):
        return f"{value:.4f}"
    if column == "parameters":
        return f"{value:,}"
    return str(value)


def markdown_table(rows: list[dict]) -> str:
    return reports.markdown_table(rows, COLUMNS, _cell)


# ---------------------------------------------------------------------------------------------- the command

def compare(methods: list[str] | None = None, latents: list[int] | None = None, out: str | Path = "runs/compare",
            data: str | None = None, epochs: int | None = None, runs: dict[str, str] | None = None,
            overwrite: bool = False, threads: int | None = None, sample_quality: bool = True,
            device: str = "auto", samplers: list[str] | None = None, samples: int = SAMPLES,
            components: int | None = None) -> list[dict]:
    """Train, fit or load every method at every code size, measure them on the test set and write the figures
    and tables into `out`. `runs` maps a method name to a trained run folder to use instead of training (its
    code size is the run's, which must be one of `latents` when they are given). Models train and compute on
    `device`. Each method samples by each of `samplers` it can use (prior, gmm; by default its own: prior where it
    has one, else gmm), one row each, measured over `samples` draws (0: grids only) when the classifier can see
    the images. Returns the table's rows."""
    methods = list(methods or DEFAULT_METHODS)
    asked = list(latents) if latents else None
    latents = asked or [30]
    runs = dict(runs or {})
    known = method_names()
    unknown = [m for m in methods if m not in known and m not in runs]
    if unknown:
        raise UserError(f"unknown method {unknown[0]!r}; choose from {', '.join(known)}, "
                        "or name a trained run with --run NAME=RUN_DIR")
    if any(k < 1 for k in latents):
        raise UserError(f"code sizes must be positive, not {latents}")
    from aelab.evaluation.samplers import SAMPLERS

    wrong = [name for name in samplers or () if name not in SAMPLERS]
    if wrong or samplers == []:
        raise UserError(f"unknown sampler {(wrong or [''])[0]!r}; use --sampler {' or '.join(SAMPLERS)}, or both: "
                        f"--sampler {','.join(SAMPLERS)}")
    if components is not None and samplers is not None and "gmm" not in samplers:
        raise UserError("--components sets the mixture of the gmm sampler; add gmm to --sampler, or drop it")
    data = str(Path(data).resolve()) if data else None
    out = CompareFolder(out)
    job = {"methods": methods, "latents": latents, "data": data, "epochs": epochs, "runs": runs, "samplers": samplers,
           "samples": samples, "components": components}
    out.claim(overwrite, job)
    if threads:
        torch.set_num_threads(threads)
    train, test = DataConfig(data).load()
    if train.data_kind != "images":  # the figure, the classifier probes and PCA's BCE are of images
        raise UserError(f"compare measures images, and {data} holds vectors; give --data of images, and measure a "
                        "run of vectors with `aelab eval`")
    given = {name: load_run(name, runs[name], device, test.shape) for name in methods if name in runs}
    for name, fitted in given.items():  # checked before anything trains
        if asked and fitted.latent not in asked:
            raise UserError(f"--run {name}={runs[name]} has codes of {fitted.latent} numbers, not "
                            f"{' or '.join(map(str, asked))}; give --latent {fitted.latent}, or a run of that size")
    out.begin(overwrite, job)
    try:
        out.runs_path.mkdir(exist_ok=True)
    except OSError as e:
        raise files.write_error(e, out.runs_path) from None

    classifier, notes = None, []
    by_latent: dict[int, list[Fitted]] = {}
    for name in methods:
        if name in given:
            by_latent.setdefault(given[name].latent, []).append(given[name])
            continue
        for k in latents:
            if name in BASELINES:
                fitted = fit_baseline(name, k, train, out, data or "fashion-mnist")
            else:
                fitted = train_model(name, k, out, data, epochs, threads, device)
            by_latent.setdefault(k, []).append(fitted)
    if sample_quality and samples and train.shape == IMAGE_SHAPE:  # the classifier learns from Fashion-MNIST
        classifier, accuracy = feature_classifier()
        floor = frechet_floor(classifier, test, train)
        notes.append(f"Samples: up to {samples} per row against as many test images, from a fixed seed, by the "
                     "row's `sampler`: `prior` decodes draws of the model's prior, `gmm` draws of a "
                     f"{components or COMPONENTS}-component full-covariance Gaussian mixture fitted to the training "
                     "codes. In the penultimate features of aelab's Fashion-MNIST classifier (test accuracy "
                     f"{accuracy:.4f}): `frechet` (`frechet_floor`: the test set's distance from the training set, "
                     "the best a sampler can expect), `precision` and `recall` (k-NN manifolds, k = 3, Kynkaanniemi "
                     "et al. 2019), `density` and `coverage` (k = 5, Naeem et al. 2020).")
    rows = []
    for k in sorted(by_latent):
        for fitted in by_latent[k]:
            print(f"compare: measuring {fitted.name} at {k}", flush=True)
            row = measure(fitted, train, test)
            if classifier is not None:
                row["frechet_floor"] = floor
            rows += sample_rows(fitted, row, samplers, train, test, out, classifier, samples, components)
        write_figure(by_latent[k], figure_images(test), out.figure(k))
    ks = sorted({r["nll_k"] for r in rows if r["nll_k"] is not None})
    if ks:
        notes.append(f"`nll`: the importance-weighted bound of Burda et al. on -log p(x), nats per test image, with "
                     f"K = {', '.join(map(str, ks))} samples (`nll_k`), for the methods with a likelihood.")
    if len(by_latent) > 1:
        plot_error_vs_latent(rows, out.error_plot_path)
    notes.insert(0, f"{len(test)} test images. `sse_per_image`: squared error summed over an image's pixels "
                    "(PCA's reconstructions are not clipped to [0, 1]); `mse` and `bce` are per pixel (PCA's BCE "
                    "on its values clipped to [1e-6, 1 - 1e-6]). `knn_accuracy`: 5-nearest-neighbour label "
                    "accuracy of the test codes among the training codes; `probe_accuracy`: a logistic "
                    "regression on the training codes.")
    reports.write_table(out.tables(), rows, COLUMNS, _cell, notes)
    write_compare_page(out.path)
    out.mark(job)
    return rows
