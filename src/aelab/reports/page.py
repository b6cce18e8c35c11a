"""report.html: a run, or a comparison, as one self-contained page that opens from disk with no network.

Everything the page shows travels inside the file: the numbers as JSON, pictures as data URIs, and the decoder's
weights as base64 float32, so that page.js can decode any point of the latent map in the browser.
The chapter's run (100 epochs of grids) makes a page of about 4 MB.
"""

from __future__ import annotations

import base64
import io
import json
import math
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import nn

from aelab.errors import UserError
from aelab.runs.runfolder import RunFolder
from aelab.storage import files
from aelab.storage.folders import CompareFolder


MAP_POINTS = 2000   # test codes on the latent map, with their images for hovering (a 0.8 MB sprite at 28x28)
MAX_FRAMES = 100    # epoch grids kept for the slider; a longer run keeps evenly spaced ones, first and last
SPRITE_COLS = 50


# ---------------------------------------------------------------------------------------------- encodings

def _uri(image: np.ndarray, fmt: str = "PNG", **options) -> str:
    """An (H, W) or (H, W, 3) uint8 array, or a PIL image, as a data URI."""
    from PIL import Image

    picture = image if isinstance(image, Image.Image) else Image.fromarray(image)
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt, **options)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buffer.getvalue()).decode()


def _file_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def _floats(array) -> str:
    """Little-endian float32 as base64: exact weights in a third of the size of JSON numbers."""
    return base64.b64encode(np.ascontiguousarray(array, dtype="<f4").tobytes()).decode()


def decoder_program(decoder: nn.Sequential, code_shape: tuple[int, ...] = ()) -> dict:
    """The decoder as a list of operations for the page's interpreter, with every weight in one float32 buffer.
    A code of more than one dimension (a VQ-VAE's grid of vectors) arrives flat and is reshaped first."""
    ops, chunks, offset = [], [], 0
    if len(code_shape) > 1:
        ops.append({"op": "reshape", "shape": list(code_shape)})

    def put(tensor: torch.Tensor) -> int:
        nonlocal offset
        chunks.append(tensor.detach().float().cpu().numpy().ravel())
        offset += chunks[-1].size
        return offset - chunks[-1].size

    for layer in decoder:
        if isinstance(layer, nn.Linear):
            ops.append({"op": "linear", "in": layer.in_features, "out": layer.out_features,
                        "w": put(layer.weight), "b": put(layer.bias)})
        elif isinstance(layer, nn.ConvTranspose2d):
            if layer.groups != 1 or layer.dilation != (1, 1) or layer.output_padding != (0, 0):
                raise ValueError(f"the page cannot run {layer}: groups, dilation and output_padding must be plain")
            ops.append({"op": "convT", "cin": layer.in_channels, "cout": layer.out_channels,
                        "k": layer.kernel_size[0], "stride": layer.stride[0], "pad": layer.padding[0],
                        "w": put(layer.weight), "b": put(layer.bias)})
        elif isinstance(layer, nn.Conv2d) and layer.kernel_size == (1, 1) and layer.stride == (1, 1) \
                and layer.padding == (0, 0) and layer.groups == 1:
            # a 1x1 convolution is the 1x1 transposed one with in and out swapped in the weight
            ops.append({"op": "convT", "cin": layer.in_channels, "cout": layer.out_channels, "k": 1, "stride": 1,
                        "pad": 0, "w": put(layer.weight.transpose(0, 1).contiguous()), "b": put(layer.bias)})
        elif isinstance(layer, nn.ReLU):
            ops.append({"op": "relu"})
        elif isinstance(layer, nn.Unflatten):
            ops.append({"op": "reshape", "shape": list(layer.unflattened_size)})
        elif not isinstance(layer, nn.Dropout):  # dropout does nothing in eval mode
            raise ValueError(f"the page has no JavaScript for decoder layer {layer}")
    return {"ops": ops, "weights": _floats(np.concatenate(chunks))}


# ---------------------------------------------------------------------------------------------- a run

def _class_names(config, labels: torch.Tensor) -> list[str]:
    from aelab.data.load import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR

    fashion = config.data.path is None or Path(config.data.path).resolve() == Path(FASHION_MNIST_DIR)
    if fashion and int(labels.max()) < len(FASHION_MNIST_CLASSES):
        return list(FASHION_MNIST_CLASSES)
    return [f"class {c}" for c in range(int(labels.max()) + 1)]


@torch.no_grad()
def latent_map(model, test, config) -> dict:
    """The first MAP_POINTS test codes, their images as one sprite, labels, and the map's axes: the code itself
    when it has 2 numbers, else its first two principal axes (point (x, y) <-> mean + x axis0 + y axis1)."""
    from aelab.pictures.images import tile

    n = min(MAP_POINTS, len(test))
    codes = torch.cat([model.encode(x) for x in test.subset(n).batches(1000)]).double().numpy()  # on the CPU
    finite = codes[np.isfinite(codes).all(1)]  # a diverged model's codes may overflow: the page skips those
    mean = finite.mean(0) if len(finite) else np.zeros(codes.shape[1])
    centred = finite - mean
    if codes.shape[1] <= 2 or len(finite) < 2 or not centred.any():  # no spread (dead units): the first two numbers
        axes = np.eye(2, codes.shape[1])
        mean[:] = 0
        names, share = [f"z{i + 1}" for i in range(min(2, codes.shape[1]))] + [""] * (2 - codes.shape[1]), []
    else:
        _, s, vt = np.linalg.svd(centred, full_matrices=False)
        axes = vt[:2] * np.sign(vt[:2, [0]] + 1e-300)  # a fixed sign: the same run draws the same map
        share = (s[:2] ** 2 / (s ** 2).sum()).tolist()
        names = [f"principal axis {i + 1} ({100 * v:.0f}% of the variance)" for i, v in enumerate(share)]
    rows = -(-n // SPRITE_COLS)
    labels = test.labels[:n] if test.labels is not None else None
    return {"n": n, "codes": _floats(codes), "mean": mean.tolist(), "axes": axes.tolist(), "axis_names": names,
            "variance": share, "labels": None if labels is None else labels.tolist(),
            "classes": None if labels is None else _class_names(config, labels),
            "sprite": _uri(tile(test.images[:n], rows, SPRITE_COLS)), "sprite_cols": SPRITE_COLS}


def epoch_grids(frames: list[Path], grey: bool = True) -> dict | None:
    """The per-epoch grids (RunFolder.grids): the real half once (lossless), each epoch's reconstruction half as
    WebP. They are read by the hardened image reader: a damaged, oversized or foreign grid is refused in one line."""
    from PIL import Image

    from aelab.data.readers import read_image_files

    if len(frames) > MAX_FRAMES:
        frames = [frames[round(i)] for i in np.linspace(0, len(frames) - 1, MAX_FRAMES)]
    if not frames:
        return None
    grids = read_image_files(frames, grey).numpy().transpose(0, 2, 3, 1)  # (n, h, w, c)
    half = grids.shape[2] // 2
    picture = (lambda g: Image.fromarray(g[..., 0] if grey else g))
    return {"real": _uri(picture(grids[0, :, :half])), "epochs": [RunFolder.grid_epoch(f) for f in frames],
            "frames": [_uri(picture(g[:, half:2 * half]), "WEBP", quality=90) for g in grids]}


def _finite(value) -> int | float | None:
    """A number the page can draw, or None (a gap): NaN, infinities, text and anything else are not."""
    if type(value) is int:
        return value if abs(value) < 2 ** 53 else None  # beyond that JavaScript rounds
    return value if type(value) is float and math.isfinite(value) else None


TOP_UNITS, TOP_IMAGES = 16, 10  # units of a code shown with their top-activating images, and images per unit


def top_images(model, data_path: str | None) -> dict | None:
    """For a model trained on activations that `aelab activations` wrote (ACTS.json beside them): its first
    TOP_UNITS units that fire, one row each, with the TOP_IMAGES source images that activate the unit most. None
    otherwise."""
    from aelab.data.activations import description, sidecar_paths, source_images, top_activating
    from aelab.pictures.images import tile

    described = description(data_path) if data_path else None
    inputs = source_images(described) if described else None
    if inputs is None:
        return None
    units, rows, values = top_activating(model, data_path, TOP_UNITS, TOP_IMAGES)
    index = np.load(sidecar_paths(data_path)[0])
    if len(index) != described["rows"]:
        raise UserError(f"{data_path}'s index holds {len(index)} rows, not {described['rows']}; write the "
                        "activations again")
    shown = inputs.images[torch.from_numpy(index[rows.ravel()])]
    shown[torch.from_numpy(values.ravel() <= 0)] = 255  # an image that does not activate the unit is left blank
    return {"name": "top_activating.png", "uri": _uri(tile(shown, len(rows), TOP_IMAGES, pad=2)),
            "title": f"Units {', '.join(map(str, units))} (one per row: the first that fire) and the "
                     f"{described['split']} images of "
                     f"{described.get('data') or 'Fashion-MNIST'} that activate each most at layer "
                     f"{described['layer']} of {described['run']}, strongest first"}


CURVE_POINTS = 400  # ROC and precision-recall points kept for the page's charts


def _thinned(x: np.ndarray, y: np.ndarray) -> list[list[float]]:
    keep = np.unique(np.r_[np.linspace(0, len(x) - 1, min(len(x), CURVE_POINTS)).round().astype(int), len(x) - 1])
    return [[float(a), float(b)] for a, b in zip(x[keep], y[keep])]


def anomaly_data(run: RunFolder) -> dict | None:
    """The last `aelab score` as the page draws it: the score histogram of training and scored inputs with the
    threshold, the ROC and precision-recall curves where labels were given, the most anomalous inputs."""
    from aelab.evaluation.anomaly import pr_curve, read_scored, roc_curve
    from aelab.reports.report import score_bins

    scored = read_scored(run)
    if scored is None:
        return None
    edges, train, inputs = score_bins(scored["train_scores"], scored["scores"])
    data = {"kind": scored["kind"], "threshold": scored["threshold"], "contamination": scored["contamination"],
            "source": scored["source"], "n": len(scored["scores"]),
            "flagged": int((scored["scores"] > scored["threshold"]).sum()),
            "edges": edges.tolist(), "train": train, "scored": inputs, "measures": scored["measures"],
            "top": _file_uri(run.anomaly_top_path) if run.anomaly_top_path.is_file() else None}
    if scored["positive"] is not None:
        data["roc"] = _thinned(*roc_curve(scored["scores"], scored["positive"]))
        data["pr"] = _thinned(*pr_curve(scored["scores"], scored["positive"]))
    return data


def text_contexts(model, data_path: str | None) -> dict | None:
    """For a model trained on a transformer's activations over text (aelab.data.text): its first TOP_UNITS units
    that fire, each with the contexts that activate it most, the firing token apart. None otherwise."""
    from aelab.data.activations import description
    from aelab.data.text import top_contexts

    described = description(data_path) if data_path else None
    if not described or "hf" not in described:
        return None
    found = top_contexts(model, data_path, described)
    return {"title": f"Units {', '.join(str(u['unit']) for u in found)} (the first that fire) and the tokens of {described['text']} that activate each most at "
                     f"module {described['layer']} of {described['hf']}, strongest first, each in its context",
            "units": found}


def run_page_data(run_path: Path, config, model, test, history: list[dict], measures: dict,
                  pictures: dict | None = None, contexts: dict | None = None) -> dict:
    """What report.html shows of a run; `pictures`: the model's, where they are drawn already (else drawn here);
    `contexts`: text_contexts, where found already."""
    from aelab.evaluation.evaluate import on_device_of
    from aelab.models import summary
    from aelab.reports.report import MEASURES

    model.eval()
    images = model.data_kind == "images"
    # metrics.jsonl as the page can draw it: a value that is not a finite number becomes null, a gap in its curve
    history = [{k: _finite(v) for k, v in record.items()} for record in history]
    seconds = [r.get("seconds") for r in history]
    if pictures is None:
        pictures = model.make_pictures(on_device_of(model, test))
    pictures = [{"name": name, "uri": _uri(picture), "title": model.pictures[name]}
                for name, picture in pictures.items()]
    if not images and (top := top_images(model, config.data.path)) is not None:
        pictures.append(top)
    return {
        "kind": "run",
        "title": f"{config.model_name}{' (conv)' if config.model.arch == 'conv' else ''} on "
                 f"{config.data.path or 'Fashion-MNIST'}",
        "run": str(run_path),
        "model": {"name": config.model_name, "class": model.title, "latent": model.code_size,
                  "shape": list(model.in_shape), "parameters": model.num_parameters(),
                  "generative": model.generative, "prior": model.prior_name,
                  "doc": model.about},
        "facts": {"epochs": len(history), "seconds": None if None in seconds else sum(seconds),
                  "test_images": len(test)},
        "measures": {k: _finite(v) for k, v in measures.items()},
        "names": MEASURES,
        "history": history,
        "grids": epoch_grids(RunFolder(run_path).grids(), model.in_shape[0] == 1),
        # the explorer shows images: a run on vectors has measures and curves, no map
        "map": latent_map(model, test, config) if images else None,
        "decoder": decoder_program(model.decoder_layers(), model.code_shape) if images else None,
        "pictures": pictures,
        "anomaly": anomaly_data(RunFolder(run_path)),
        "contexts": contexts or (None if images else text_contexts(model, config.data.path)),
        "summary": summary(model),
        "config": config.to_dict(),
    }


# ---------------------------------------------------------------------------------------------- a comparison

def compare_page_data(folder: CompareFolder) -> dict:
    rows = json.loads(folder.json_path.read_text())
    notes = folder.md_path.read_text().split("\n\n")[1:] if folder.md_path.is_file() else []
    for row in rows:  # link each trained model's row to its own page
        page = RunFolder(folder.run(row["method"], row["latent"])).page_path
        row["page"] = str(page.relative_to(folder.path)) if page.is_file() else None
    error_plot = folder.error_plot_path
    grids = [(r, folder.samples(r["method"], r["latent"], r["sampler"])) for r in rows if r.get("sampler")]
    samples = [{"method": r["method"], "latent": r["latent"], "sampler": r["sampler"], "uri": _file_uri(path)}
               for r, path in grids if path.is_file()]
    return {"kind": "compare", "samples": samples, "title": f"Comparison: {', '.join(dict.fromkeys(r['method'] for r in rows))}",
            "rows": rows, "notes": [n.strip() for n in notes if n.strip()],
            "figures": [{"latent": folder.figure_latent(p), "uri": _file_uri(p)} for p in folder.figures()],
            "error_vs_latent": _file_uri(error_plot) if error_plot.is_file() else None}


# ---------------------------------------------------------------------------------------------- the page

def render(data: dict) -> str:
    """The page: the template with its script and the data inlined (no external resource of any kind)."""
    package = resources.files("aelab.reports")
    script = (package / "page.js").read_text()
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")  # no early end of the script tag
    return ((package / "page.html").read_text()
            .replace("__TITLE__", data["title"].replace("&", "&amp;").replace("<", "&lt;"))
            .replace("/*__SCRIPT__*/", script)
            .replace("__DATA__", payload))


def write_run_page(run_path: str | Path, config, model, test, history: list[dict], measures: dict,
                   out: str | Path | None = None, pictures: dict | None = None, contexts: dict | None = None) -> Path:
    """RUN/report.html (or `out`): the run's config and model, its test set (an ImageSet), its metrics.jsonl
    records, its final test measures and the model's pictures (drawn here unless given)."""
    path = Path(out or RunFolder(run_path).page_path)
    files.write_text(path, render(run_page_data(Path(run_path), config, model, test, history, measures, pictures,
                                                    contexts)))
    return path


def write_compare_page(folder: str | Path, out: str | Path | None = None) -> Path:
    """FOLDER/report.html (or `out`) for a folder written by `aelab compare`."""
    folder = CompareFolder(folder)
    path = Path(out or folder.page_path)
    files.write_text(path, render(compare_page_data(folder)))
    return path
