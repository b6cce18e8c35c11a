"""The `aelab` command: parse, call the library, print. torch is imported only by the commands that need it,
so `aelab --help` answers at once."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from aelab.errors import UserError
from aelab.flags import FLAGS, check_resumable, flag_of, resumable_flags


def int_in(low: int, high: int):
    """An argparse type: an integer in [low, high], checked where the flag enters."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range: give an integer from {low} to {high:,}")
        return value
    return parse


THREADS = int_in(1, 4096)


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, no usage dump
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


DEVICE_HELP = "auto (default: the first CUDA GPU if there is one, else the CPU), cpu, cuda, cuda:N or mps"


def add_sampler_flags(p, several: bool = False) -> None:
    if several:
        p.add_argument("--sampler", metavar="NAME,NAME", help="prior, gmm or both (prior,gmm): one row per method "
                       "and sampler it can use (default: each method's own, prior where it has one, else gmm)")
    else:
        p.add_argument("--sampler", help="prior (the model's own: the VAE family, aae, wae) or gmm (a Gaussian mixture "
                       "fitted to the training codes once, kept in RUN/gmm.safetensors); default: prior where the "
                       "model has one, else gmm")
    p.add_argument("--components", type=int_in(1, 10_000), help="Gaussians in the gmm sampler's mixture (default 10)")


def build_parser() -> Parser:
    parser = Parser(prog="aelab", description="Autoencoder laboratory: train, evaluate and use autoencoders.")
    parser.add_argument("--version", action="version", version="aelab 0.1.0")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser, metavar="COMMAND")

    p = sub.add_parser("train", help="train a model; writes a run folder with weights, metrics, grids and a report")
    p.add_argument("model", nargs="?", default=None, help="registered model name (default ae; see `aelab models`)")
    p.add_argument("--config", help="JSON or TOML file of settings ([data], [model], [train] or flat keys)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any setting, e.g. model.hidden=512,256")
    p.add_argument("--epochs", type=int)
    p.add_argument("--latent", type=int, help="code size (default 20)")
    p.add_argument("--hidden", help="hidden widths, comma separated (default 256,128,64)")
    p.add_argument("--arch", choices=("mlp", "conv"))
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--precision", choices=("fp32", "bf16"), help="bf16: bfloat16 autocast (faster on CPUs with AVX512-BF16)")
    p.add_argument("--grid-every", type=int, metavar="N", help="write the test grid every N epochs (0: never)")
    p.add_argument("--data", metavar="PATH", help="idx folder, image folder or .npy/.npz (default: Debian's "
                   "Fashion-MNIST); a .npy of float vectors (n, d) trains on vectors")
    p.add_argument("--rgb", action="store_true", help="keep colour images in colour (default: convert to grey)")
    p.add_argument("--out", metavar="RUN_DIR", help="run folder (default: runs/MODEL, numbered if taken)")
    p.add_argument("--resume", nargs="?", const=True, metavar="RUN_DIR",
                   help=f"continue an interrupted run ({', '.join(resumable_flags())} may change)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.add_argument("--threads", type=THREADS, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--device", help=DEVICE_HELP)
    p.add_argument("--log", action="append", default=[], choices=("tensorboard", "mlflow"),
                   help="also log to TensorBoard (RUN/tensorboard) or MLflow (MLFLOW_TRACKING_URI); may repeat")

    p = sub.add_parser("eval", help="test-set measures of a trained run")
    p.add_argument("run")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--data", metavar="PATH", help="evaluate on this data's test split instead of the run's")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--probe", action="store_true", help="insist on the label-based measures (sparse probing, TPP), "
                   "which labelled activations get anyway: refuse data without labels")
    p.add_argument("--save", action="store_true", help="also write the measures to RUN/eval.json (the run's own "
                   "test set only), and keep a gmm sampler's mixture; without it eval only reads")
    add_sampler_flags(p)
    p.add_argument("--samples", type=int_in(0, 100_000), default=10_000, help="samples measured against as many "
                   "test images (default 10000; 0: no sample measures)")

    p = sub.add_parser("info", help="layer and parameter summary of a model or a run")
    p.add_argument("target", nargs="?", default="ae", help="model name or run folder")
    p.add_argument("--latent", type=int)
    p.add_argument("--arch", choices=("mlp", "conv"))
    p.add_argument("--hidden")

    sub.add_parser("models", help="list the registered models")

    p = sub.add_parser("sample", help="new images from any run: its prior, or a Gaussian mixture fitted to its "
                       "training codes; a grid PNG")
    p.add_argument("run")
    p.add_argument("-n", type=int_in(1, 100_000), default=100, help="how many images (default 100)")
    add_sampler_flags(p)
    p.add_argument("--out", required=True, help="FILE.png (a grid, 10 per row), a folder (one PNG each) or FILE.npy")
    p.add_argument("--seed", type=int_in(0, 2**63 - 1), default=0)
    p.add_argument("--overwrite", action="store_true", help="replace existing output")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)

    p = sub.add_parser("interpolate", help="decode codes on the line between two images: a strip PNG")
    p.add_argument("run")
    p.add_argument("a", help="an image file, or the index of an image in the run's test set")
    p.add_argument("b", help="an image file, or the index of an image in the run's test set")
    p.add_argument("--steps", type=int_in(2, 10_000), default=10,
                   help="images in the strip, both ends included (default 10)")
    p.add_argument("--out", required=True, help="FILE.png (one strip), a folder or FILE.npy")
    p.add_argument("--overwrite", action="store_true", help="replace existing output")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)

    p = sub.add_parser("compare", help="the chapter's figure 12.3 and a leaderboard: models and PCA baselines")
    p.add_argument("methods", nargs="*", metavar="METHOD",
                   help="registered models, pca, logistic_pca (default: ae logistic_pca pca)")
    p.add_argument("--latent", type=int, help="code size (default 30, the chapter's figure)")
    p.add_argument("--latents", metavar="K,K,...", help="several code sizes, e.g. 2,10,20,30,64: adds error_vs_latent.png")
    p.add_argument("--out", required=True, metavar="DIR", help="figures, tables, and the runs they came from")
    p.add_argument("--epochs", type=int, help="epochs for the models trained here (default: the model's, 100)")
    p.add_argument("--run", action="append", default=[], metavar="NAME=RUN_DIR",
                   help="use this trained run as method NAME instead of training one")
    add_sampler_flags(p, several=True)
    p.add_argument("--samples", type=int_in(0, 100_000), default=10_000, help="samples of each row measured "
                   "against as many test images (default 10000; 0: sample grids only)")
    p.add_argument("--data", metavar="PATH", help="idx folder, image folder or .npy/.npz (default: Fashion-MNIST)")
    p.add_argument("--json", action="store_true", help="print the table as a JSON list of rows (progress to stderr)")
    p.add_argument("--overwrite", action="store_true", help="replace DIR's figures and tables (finished runs are reused)")
    p.add_argument("--threads", type=THREADS, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)

    p = sub.add_parser("report", help="rebuild report.html, the page of a run or a comparison (opens from disk)")
    p.add_argument("folder", help="a run folder (`aelab train --out`) or a comparison folder (`aelab compare --out`)")
    p.add_argument("--out", metavar="FILE.html", help="where to write the page (default: FOLDER/report.html)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")

    p = sub.add_parser("export", help="a trained run as encoder.onnx and decoder.onnx, to use without torch; an sae "
                       "run also as SAELens reads it")
    p.add_argument("run")
    p.add_argument("--format", choices=("onnx", "saelens"), default="onnx",
                   help="onnx (default), or saelens: cfg.json and sae_weights.safetensors for SAE.load_from_disk")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the exported files")
    p.add_argument("--overwrite", action="store_true", help="replace existing files")

    p = sub.add_parser("sweep", help="several SAEs on the same data in one pass: every combination of --grid, "
                       "each its own run folder, and a leaderboard of FVU against L0")
    p.add_argument("model", choices=("sae",), help="the model to sweep (sae)")
    p.add_argument("--data", required=True, metavar="FILE.npy", help="vectors (n, d), e.g. from `aelab activations`")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="a setting and its values, e.g. k=16,32,64; repeat for more (every combination is trained)")
    p.add_argument("--out", required=True, metavar="DIR", help="one run folder per combination, and the leaderboard")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a setting shared by every run")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help=DEVICE_HELP)
    p.add_argument("--threads", type=THREADS, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--overwrite", action="store_true", help="replace existing run folders")

    p = sub.add_parser("activations", help="a layer's activations of a trained run over a data set, or of a Hugging "
                       "Face transformer over text, as .npy for `aelab train sae --data`")
    p.add_argument("run", nargs="?", help="a run folder (or --hf and --text instead)")
    p.add_argument("--layer", required=True, help="a layer's name, e.g. encoder.6, or with --hf a module's, e.g. "
                   "h.3 (a block's output: the residual stream); a wrong name lists some")
    p.add_argument("--out", required=True, metavar="FILE.npy", help="the activations (n, width); FILE.index.npy "
                   "and FILE.json beside it say which inputs and where from (with --hf: FILE.tokens.npy too)")
    p.add_argument("--data", metavar="PATH", help="take the inputs from this data set (default: the run's own)")
    p.add_argument("--split", choices=("train", "test"), default="train", help="which split (default train)")
    p.add_argument("--hf", metavar="MODEL_DIR", help="a local Hugging Face model folder (save_pretrained's, with its "
                   "tokenizer): its activations at every token of --text (needs aelab[hf])")
    p.add_argument("--text", metavar="FILE", help="with --hf: a UTF-8 text file, one document a line, or a .npy of "
                   "token ids (tokens,) or (documents, tokens)")
    p.add_argument("--context", type=int_in(1, 1_000_000), help="with --hf: tokens the model sees at once; longer "
                   "documents are cut (default: its positions, at most 1024)")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    p.add_argument("--batch-size", type=int_in(1, 1_000_000), help="inputs a batch (default 1000), with --hf "
                   "stretches of text (default 8)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output")

    p = sub.add_parser("score", help="anomaly scores of inputs through a trained run (higher: stranger): a CSV of "
                       "score, rank and flag; the run's report and page gain the scores")
    p.add_argument("run")
    p.add_argument("inputs", nargs="+", help="image files, folders, .npy/.npz (a run trained on vectors: .npy vectors)")
    p.add_argument("--out", required=True, metavar="FILE.csv", help="one row per input: index, score, rank, flag")
    p.add_argument("--score", metavar="KIND", help="which score: recon (default), mahalanobis; a VAE's elbo "
                   "(default) or iwae (see docs/anomaly.md)")
    p.add_argument("--contamination", type=float, help="the share of training inputs above the threshold, in "
                   "(0, 0.5] (default 0.01)")
    p.add_argument("--threshold", type=float, help="flag scores above this instead")
    p.add_argument("--labels", metavar="FILE", help=".npy or text, one per input: 1 for an anomaly, 0 for normal "
                   "(with --normal-class: class numbers); adds AUROC and average precision")
    p.add_argument("--normal-class", type=int, metavar="K", help="inputs of class K are normal, the rest anomalies "
                   "(labels from --labels or from the .npz input's y_test / labels / y)")
    p.add_argument("--top", type=int_in(1, 1000), default=10, help="how many of the most anomalous to show (10)")
    p.add_argument("--out-images", metavar="FILE.png", help="the --top most anomalous inputs over their "
                   "reconstructions and per-pixel error maps")
    p.add_argument("--overwrite", action="store_true", help="replace existing output")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--rgb", action="store_true", help="keep colour images in colour")

    for name, help_text, inputs_help in (
            ("reconstruct", "reconstruct images (or vectors) through a trained run",
             "image files, folders, .npy/.npz (a run trained on vectors: .npy vectors)"),
            ("encode", "codes of images (or vectors) as .npy",
             "image files, folders, .npy/.npz (a run trained on vectors: .npy vectors)"),
            ("denoise", "clean noisy images with a trained denoising run (dae)", "image files, folders, .npy/.npz"),
            ("decode", "images (or vectors) from codes (.npy)", "a .npy file of codes (n, latent)")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("run")
        p.add_argument("inputs", nargs="+", help=inputs_help)
        p.add_argument("--out", required=True,
                       help="a folder (one PNG per image), FILE.png (a grid) or FILE.npy" if name != "encode" else "FILE.npy")
        p.add_argument("--overwrite", action="store_true", help="replace existing output")
        p.add_argument("--device", default="auto", help=DEVICE_HELP)
        p.add_argument("--rgb", action="store_true", help="keep colour images in colour") if name != "decode" else None
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else map(str, argv))  # a stopped sweep says how to go on
    _signals()
    _allocator()
    try:
        return COMMANDS[args.command](args) or 0
    except UserError as e:
        print(f"aelab: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM before training began: a stop like any other, one line, exit 2
        print("aelab: interrupted", file=sys.stderr)
        return 2


def _signals() -> None:
    """Ctrl-C, and SIGTERM (what schedulers and torchrun send) like it, stop with KeyboardInterrupt, but never inside
    an import; past a file-size limit (`ulimit -f`) a write fails with one line instead of the process being
    killed. A shell's background job ignores Ctrl-C, and so does aelab there."""
    import signal

    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def _interrupt(signum, frame) -> None:
    """KeyboardInterrupt, once no module is being imported: numpy or torch stopped half-way through its import stays
    broken in sys.modules, or swallows the interrupt (and training goes on), and an interrupt inside code that torch's
    import evaluates makes Python end as killed by Ctrl-C whatever aelab returns. During an import it waits, looking
    again every 20 ms."""
    import signal

    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            signal.signal(signal.SIGALRM, _interrupt)
            signal.setitimer(signal.ITIMER_REAL, 0.02)
            return
        frame = frame.f_back
    raise KeyboardInterrupt


def _allocator() -> None:
    """glibc's malloc hands freed blocks of a megabyte or more back to the system and then faults them in again page
    by page: about 370 page faults and 1 ms of system time in each step of the chapter's model on 2 cores. Kept
    (blocks under 32 MB from the heap, glibc's own ceiling for its moving threshold, and up to 256 MB of its free
    top), a step faults about once. A beta-TC-VAE's step makes several (512, 512, 16) float tensors of exactly 16 MB:
    with 16 MB as the bound each was mapped afresh (31 000 page faults a step, nearly half its CPU time), and with 64
    or 128 MB of free top kept, a step's end still handed many back. A setting of this program's process, not of the
    library; elsewhere than glibc, nothing changes."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    for option, value in ((-3, 32 << 20), (-1, 256 << 20), (-2, 16 << 20)):  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD,
        libc.mallopt(option, value)                                          # M_TOP_PAD


def cmd_train(args) -> int:
    from aelab import devices
    from aelab.experiments.pipeline import resume, train
    from aelab.runs.settings import resolve

    devices.check_environment()  # torchrun's variables, before any data is read
    overrides = _overrides(args)
    if args.rgb:
        overrides["data.grey"] = False
    if args.resume:
        run_dir = args.out if args.resume is True else args.resume
        if run_dir is None:
            raise UserError("--resume needs the run folder: `aelab train --resume RUN_DIR`")
        if args.config or args.model:  # not settings: refused here, together with any setting resume() refuses
            check_resumable(overrides, ["--config"] * bool(args.config) + ["the model name"] * bool(args.model))
        return resume(run_dir, threads=args.threads, changes=overrides, loggers=args.log)
    config = resolve(args.model, args.config, overrides)
    return train(config, out=args.out, overwrite=args.overwrite, threads=args.threads, loggers=args.log)


def _overrides(args) -> dict[str, object]:
    """The settings of --set and of whichever flags of FLAGS the command has; a flag and a --set of the same
    setting (bare or qualified) is refused, whatever their values: which one was meant cannot be known."""
    sets = dict(_parse_set(item) for item in getattr(args, "set", ()))
    given = {setting: getattr(args, name) for name, setting in FLAGS.items() if getattr(args, name, None) is not None}
    for key in sets:
        setting = next((s for s in given if key in (s, s.split(".", 1)[1])), None)
        if setting is not None:
            raise UserError(f"{flag_of(setting)} and --set {key}= both set {setting}; give it once")
    return {**sets, **given}


def _parse_set(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise UserError(f"--set takes KEY=VALUE, not {item!r}")
    return key.strip(), value.strip()


def cmd_eval(args) -> int:
    import contextlib
    import dataclasses
    import math

    from aelab.data.activations import description
    from aelab.evaluation.evaluate import evaluate
    from aelab.evaluation.frechet import feature_classifier
    from aelab.evaluation.generation import measurable, measure_sampler
    from aelab.evaluation.probing import measures_if_labelled
    from aelab.evaluation.samplers import check_sampler, default_sampler
    from aelab.runs.runfolder import RunFolder, load_model, run_sampler

    if args.save and (args.data or not Path(args.run).is_dir()):
        raise UserError("--save writes RUN/eval.json, the measures of a run folder on its own test set; "
                        "drop --data (or --save)")
    model = load_model(args.run, args.device)
    run = RunFolder.open(args.run)
    config = run.config()
    if args.sampler or args.components:
        check_sampler(args.sampler or default_sampler(model), model, args.components,
                      f"{args.run} is a {config.model_name!r} run that")
    data = dataclasses.replace(config.data, path=args.data or config.data.path)
    # the training split too where the probes may have labels: activations that `aelab activations` described
    train, test = data.load() if data.path and description(data.path) else (None, data.load_test())
    if test.shape != model.in_shape:
        raise UserError(f"the test data are {'x'.join(map(str, test.shape))} but {args.run} takes "
                        f"{'x'.join(map(str, model.in_shape))}; give --data of that size")
    if args.probe and train is None:
        measures_if_labelled(model, data.path, train, test, required=True)  # one line: no labels
    sampled = args.samples > 0 and measurable(test)
    if (args.sampler or args.components) and not sampled:
        raise UserError("sample measures need 28x28 grey images (the classifier's features) and --samples above "
                        "0; drop --sampler and --components")
    metrics = evaluate(model, test)
    if train is not None:
        metrics.update(measures_if_labelled(model, data.path, train, test, required=args.probe))
    if sampled:  # the classifier, trained on first use, says so on stderr: stdout stays one JSON object
        with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
            sampler = run_sampler(model, args.sampler, args.run, args.components, args.save)
            metrics.update(measure_sampler(sampler, feature_classifier()[0], test, args.samples))
            if sampler.name == "gmm":
                metrics["gmm_components"] = sampler.mixture.components
    bad = [k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:  # JSON has no NaN: refuse rather than write a file no other reader can parse
        raise UserError(f"{args.run} gives non-finite measures ({', '.join(f'{k} {metrics[k]}' for k in bad)}); "
                        "its weights overflow on these images: retrain with a lower --lr")
    if args.save:  # eval.json is the run's own test set, as report.md says
        run.write_measures(metrics)
    if args.json:
        print(json.dumps(metrics))
    else:
        print(f"{args.run}: {config.model_name}, {len(test)} test {test.data_kind}")
        for k, v in metrics.items():
            print(f"  {k:<16}{v:.4f}" if isinstance(v, float) else f"  {k:<16}{v}")
    return 0


def cmd_info(args) -> int:
    from aelab.models import build, summary
    from aelab.runs.runfolder import load_model
    from aelab.runs.settings import resolve

    if Path(args.target).exists():
        model = load_model(args.target)
    else:
        config = resolve(args.target, None, _overrides(args))
        model = build(config.model_name, config.model)
    print(f"Model: {model.title}")
    print(summary(model))
    return 0


def cmd_models(args) -> int:
    from aelab.models import MODELS

    for name, cls in MODELS.items():
        first = ((cls.__doc__ or "").strip().splitlines() or [""])[0]  # a plugin's class may have no docstring
        print(f"{name:<10}{first}")
    return 0


def cmd_compare(args) -> int:
    import contextlib

    from aelab.experiments.compare import compare, markdown_table

    if args.latent is not None and args.latents:
        raise UserError("give --latent K or --latents K,K,..., not both")
    try:
        latents = [int(k) for k in args.latents.split(",")] if args.latents is not None else None
    except ValueError:
        raise UserError(f"--latents takes code sizes separated by commas, e.g. 2,10,30, not {args.latents!r}") from None
    runs = {}
    for item in args.run:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise UserError(f"--run takes NAME=RUN_DIR, not {item!r}")
        if name in runs:
            raise UserError(f"--run {name}= is given twice; give each run its own NAME")
        runs[name] = path
    # methods named plus runs given; runs alone compare just those runs
    methods = [*args.methods, *(name for name in runs if name not in args.methods)] or None
    progress = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
    with progress:
        rows = compare(methods, latents or ([args.latent] if args.latent is not None else None), args.out, args.data,
                       args.epochs, runs, args.overwrite, args.threads, device=args.device,
                       samplers=args.sampler.split(",") if args.sampler is not None else None,
                       samples=args.samples, components=args.components)
    if args.json:
        print(json.dumps(rows))
    else:
        print(markdown_table(rows))
        print(f"figures and tables in {args.out}")
    return 0


def cmd_report(args) -> int:
    folder, out = Path(args.folder), args.out and Path(args.out)
    if out is not None:
        if out.suffix != ".html":
            raise UserError(f"the report is an HTML page; give --out FILE.html, not {out}")
        if out.exists() and not args.overwrite:
            raise UserError(f"{out} already exists; choose another --out or pass --overwrite")
    if not folder.exists():
        raise UserError(f"{folder} does not exist; pass a run folder (`aelab train --out`) or a comparison folder "
                        "(`aelab compare --out`)")
    from aelab.storage.folders import CompareFolder
    from aelab.runs.runfolder import RunFolder

    if RunFolder(folder).config_path.is_file():
        from aelab.experiments.pipeline import write_page

        page = write_page(folder, out)
    elif CompareFolder(folder).json_path.is_file():
        from aelab.reports.page import write_compare_page

        page = write_compare_page(folder, out)
    else:
        raise UserError(f"{folder} is neither a run folder (no {RunFolder(folder).config_path.name}) nor a comparison "
                        f"folder (no {CompareFolder(folder).json_path.name}); pass a folder written by `aelab train "
                        "--out` or `aelab compare --out`")
    print(f"report: {page}")
    return 0


def cmd_apply(args) -> int:
    """reconstruct, encode, decode and denoise: inputs through a trained model, to PNGs, a grid or .npy."""
    import numpy as np

    from aelab.data.load import read_codes, read_inputs, read_vectors
    from aelab.runs.runfolder import load_model

    out = Path(args.out)
    _check_new_output(out, args.overwrite)
    if args.command == "denoise":
        model = _model_that(args.run, lambda m: m.denoising, "not trained to remove noise; denoise with a dae run "
                                                    "(`aelab train dae`), or use `aelab reconstruct`", args.device)
    else:
        model = load_model(args.run, args.device)
    vectors = model.data_kind == "vectors"  # a run trained on vectors takes and gives .npy vectors
    if vectors and out.suffix != ".npy":
        raise UserError(f"{args.run} was trained on vectors; give --out FILE.npy, not {out}")
    if args.command == "decode":
        result = model.decode(read_codes(args.inputs))
    else:
        inputs = read_vectors(args.inputs) if vectors else read_inputs(args.inputs, grey=not args.rgb).images
        result = model.encode(inputs) if args.command == "encode" else model.reconstruct(inputs)
    result = np.asarray(result)  # decode of numpy codes gives numpy, the others tensors
    if args.command == "encode":
        if out.suffix != ".npy":
            raise UserError(f"encode writes a .npy file; give --out FILE.npy, not {out}")
        _write_npy(result, out)
    else:
        _write_images(result, out)
    what = {"encode": "codes", "denoise": "denoised images"}.get(args.command, "images")
    print(f"wrote {len(result)} {what} to {out}")
    return 0


def cmd_score(args) -> int:
    """Anomaly scores of inputs; every check before anything is written."""
    from aelab.data.datasets import ImageSet
    from aelab.data.load import read_inputs, read_vectors
    from aelab.evaluation import anomaly
    from aelab.storage import files
    from aelab.runs.runfolder import RunFolder, load_model

    out, pictures = Path(args.out), args.out_images and Path(args.out_images)
    if out.suffix != ".csv":
        raise UserError(f"aelab score writes a CSV; give --out FILE.csv, not {out}")
    for path in filter(None, (out, pictures)):
        files.refuse_link(path)
        if path.exists() and not args.overwrite:
            raise UserError(f"{path} already exists; choose another path or pass --overwrite")
    if pictures and pictures.suffix != ".png":
        raise UserError(f"--out-images writes one PNG; give FILE.png, not {pictures}")
    if args.threshold is not None and args.contamination is not None:
        raise UserError("give --contamination (a share of the training inputs) or --threshold (a score), not both")
    contamination = anomaly.check_contamination(args.contamination if args.contamination is not None
                                                else anomaly.CONTAMINATION)
    model = load_model(args.run, args.device)
    kind = anomaly.kind_of(model, args.score)
    vectors = model.data_kind == "vectors"
    if vectors and pictures:
        raise UserError(f"{args.run} was trained on vectors, which have no pictures; drop --out-images")
    inputs = read_vectors(args.inputs) if vectors else read_inputs(args.inputs, grey=not args.rgb).images
    data = ImageSet(model.prepare(inputs).cpu())  # the model's own floats; a wrong shape is refused here
    positive = _anomaly_labels(args, len(data))
    run = RunFolder.open(args.run)
    if run.path.is_file():
        raise UserError(f"{run.path} is a weights file; score with its run folder, which keeps the training scores")
    reference, train_scores = anomaly.kept(run, model, kind)
    result = anomaly.score_inputs(model, data, kind, reference, train_scores, contamination, args.threshold,
                                  positive, args.top)
    _write_scores_csv(out, result)
    top = None if vectors else _top_picture(model, data, result["top"])
    if pictures:
        from aelab.pictures.images import save_png

        save_png(top, pictures)
    from aelab.experiments.pipeline import write_scored_reports

    report = write_scored_reports(run, result, top, " ".join(args.inputs)[:300])
    flagged = int(result["flags"].sum())
    rule = f"contamination {contamination:g} of the training scores" if args.threshold is None else "--threshold"
    print(f"scored {len(data)} inputs by {kind}: {flagged} flagged above {result['threshold']:.4g} ({rule}); "
          f"wrote {out}" + (f" and {pictures}" if pictures else ""))
    if positive is not None:
        m = result["measures"]
        print(f"AUROC {m['auroc']:.4f}, average precision {m['average_precision']:.4f} "
              f"({m['anomalies']} anomalies, {m['normal']} normal)")
    print(f"report: {report}")
    return 0


def _anomaly_labels(args, n: int):
    """True for each input that is an anomaly, from --labels and --normal-class; None without either."""
    import numpy as np

    from aelab.data.readers import read_array_file

    if args.labels is None and args.normal_class is None:
        return None
    if args.labels is not None:
        path = Path(args.labels)
        if not path.is_file():
            raise UserError(f"--labels {path} does not exist; give a .npy or text file with one label per input")
        try:
            labels = (read_array_file(path)["images"] if path.suffix == ".npy"
                      else np.loadtxt(path, dtype=np.float64, ndmin=1))
        except (ValueError, KeyError) as e:
            raise UserError(f"--labels {path} is not a list of numbers ({str(e)[:100]}); give one label per input, "
                            "a .npy or one per line") from None
        source = f"--labels {path}"
    else:
        npz = [p for p in args.inputs if Path(p).suffix == ".npz"]
        arrays = read_array_file(Path(npz[0])) if len(npz) == 1 == len(args.inputs) else {}
        key = next((k for k in ("y_test", "labels", "y") if k in arrays), None)
        if key is None:
            raise UserError("--normal-class needs labels: give --labels FILE, or one .npz input that holds y_test, "
                            "labels or y")
        labels, source = arrays[key], f"{npz[0]}[{key}]"
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != n:
        raise UserError(f"{source} holds {labels.size} labels for {n} inputs; give one label per input, in order")
    if not np.isfinite(labels.astype(np.float64)).all():
        raise UserError(f"{source} holds values that are not numbers; give one label per input")
    if args.normal_class is not None:
        if args.normal_class not in set(labels.tolist()):
            raise UserError(f"class {args.normal_class} is not among the labels of {source} "
                            f"({', '.join(map(str, sorted(set(labels.tolist()))[:12]))}); pick one of them")
        positive = labels != args.normal_class
    else:
        if not set(labels.tolist()) <= {0, 1}:
            raise UserError(f"{source} holds labels other than 0 and 1; mark anomalies 1 and normal inputs 0, or give "
                            "class numbers with --normal-class K")
        positive = labels == 1
    if positive.all() or not positive.any():
        raise UserError(f"{source} marks {'every' if positive.all() else 'no'} input as an anomaly; AUROC needs both")
    return positive


def _write_scores_csv(out: Path, result: dict) -> None:
    from aelab.storage import files

    label = result["positive"]
    rows = ["index,score,rank,flag" + (",label" if label is not None else "")]
    for i, (score, rank, flag) in enumerate(zip(result["scores"], result["ranks"], result["flags"])):
        rows.append(f"{i},{score:.7g},{rank},{int(flag)}" + (f",{int(label[i])}" if label is not None else ""))
    files.write_text(out, "\n".join(rows) + "\n")


def _top_picture(model, data, top):
    """The most anomalous inputs over their reconstructions and error maps."""
    import torch

    from aelab.reports.report import anomaly_top

    x = data.floats(torch.as_tensor(top)).to(model.device)
    recon, error = model.anomaly_details(x)
    return anomaly_top(x.cpu(), recon.cpu(), error.clamp(0, 1).cpu())


def cmd_sample(args) -> int:
    import torch

    from aelab.evaluation.samplers import check_sampler, default_sampler
    from aelab.runs.runfolder import RunFolder, load_model, run_sampler

    out = Path(args.out)
    _check_new_output(out, args.overwrite)
    model = load_model(args.run, args.device)
    what = f"{args.run} is a {RunFolder.open(args.run).config().model_name!r} run that"
    check_sampler(args.sampler or default_sampler(model), model, args.components, what)
    if model.data_kind == "vectors" and out.suffix != ".npy":  # a run trained on vectors samples vectors
        raise UserError(f"{args.run} was trained on vectors; give --out FILE.npy, not {out}")
    sampler = run_sampler(model, args.sampler, args.run, args.components, keep=True)
    images = sampler.draw(args.n, torch.Generator().manual_seed(args.seed))
    _write_images(images.cpu().numpy(), out)
    print(f"wrote {args.n} samples to {out}; sampler {sampler.describe()}")
    return 0


def cmd_interpolate(args) -> int:
    from aelab.pictures.images import save_png, tile
    from aelab.runs.runfolder import load_model

    out = Path(args.out)
    _check_new_output(out, args.overwrite)
    model = load_model(args.run, args.device)
    if model.data_kind == "vectors":
        raise UserError(f"{args.run} was trained on vectors; interpolate between their codes with `aelab encode`, "
                        "then `aelab decode`")
    a, b = _image_or_test_index(args.run, args.a), _image_or_test_index(args.run, args.b)
    strip = model.interpolate(a, b, args.steps).cpu().numpy()
    if out.suffix == ".png":
        save_png(tile(strip, 1, len(strip)), out)
    else:
        _write_images(strip, out)
    print(f"wrote {len(strip)} images from {args.a} to {args.b} to {out}")
    return 0


def cmd_export(args) -> int:
    """encoder.onnx and decoder.onnx, checked against the torch model with onnxruntime on test images; or an sae
    run in SAELens's format."""
    import torch

    from aelab.runs.export import export_onnx, max_differences, require_onnx
    from aelab.runs.runfolder import RunFolder, load_model
    from aelab.storage import files

    out = Path(args.out)
    files.refuse_link(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file, and --out takes a folder; pick another --out")
    if args.format == "saelens":
        from aelab.runs.saelens import export_saelens

        out = export_saelens(args.run, out, args.overwrite)
        print(f"wrote {out / 'cfg.json'} and {out / 'sae_weights.safetensors'} (SAELens's SAE.load_from_disk reads them)")
        return 0
    require_onnx()
    taken = [p.name for p in (out / "encoder.onnx", out / "decoder.onnx") if p.exists() or p.is_symlink()]
    if taken and not args.overwrite:
        raise UserError(f"{out} already holds {' and '.join(taken)}; choose another --out or pass --overwrite")
    model = load_model(args.run, "cpu")  # exported from the CPU: the files run anywhere
    config = RunFolder.open(args.run).config()  # a damaged config.json is refused, as eval refuses it
    paths = export_onnx(model, out)
    try:  # the run's own test images when its data is here; else uniform noise of the same shape
        images, what = config.data.load_test().floats(slice(0, 256)), "test images"
    except UserError:
        images, what = torch.rand(256, *model.in_shape, generator=torch.Generator().manual_seed(0)), "random images"
    diff = max_differences(model, out, images)
    grid = f": a {'x'.join(map(str, model.code_shape))} grid" if len(model.code_shape) > 1 else ""
    print(f"wrote {paths[0]} and {paths[1]}: images (batch, {', '.join(map(str, model.in_shape))}) -> "
          f"codes (batch, {model.code_size}{grid}) -> images")
    print(f"onnxruntime against torch on {len(images)} {what}: codes differ by at most {diff['codes']:.1e}, "
          f"images by {diff['images']:.1e}")
    return 0


def cmd_sweep(args) -> int:
    import shlex

    from aelab.experiments.sweep import markdown, parse_grid, sweep

    overrides = _overrides(args)
    again = f"`aelab {shlex.join(args.argv)}`"
    if sweep(args.model, parse_grid(args.grid), args.out, overrides, args.overwrite, args.threads, again=again):
        print(markdown(args.out))  # rank 0's
        print(f"leaderboard and its plot against L0 in {args.out}")
    return 0


def cmd_activations(args) -> int:
    from aelab.data.activations import sidecar_paths

    if (args.run is None) == (args.hf is None) or (args.hf is None) != (args.text is None):
        raise UserError("give a run folder, or --hf MODEL_DIR with --text FILE, not both")
    if args.hf is not None:
        if args.data is not None or args.split != "train":
            raise UserError("--data and --split choose a run's inputs; with --hf, --text gives them")
        from aelab.data.text import write_text_activations

        described = write_text_activations(args.hf, args.layer, args.text, args.out, args.dtype,
                                           args.batch_size or 8, args.context, args.overwrite)
    else:
        if args.context is not None:
            raise UserError("--context goes with --hf")
        from aelab.runs.activations import write_activations

        described = write_activations(args.run, args.layer, args.out, args.data, args.split, args.dtype,
                                      args.batch_size or 1000, args.overwrite)
    index, about = sidecar_paths(args.out)
    print(f"wrote {described['rows']} activations of width {described['width']} ({described['dtype']}) at "
          f"{described['layer']} to {args.out}, with {index} and {about}")
    return 0


def _model_that(run: str, able, cannot: str, device: str):
    """The run's model, or one line saying what it cannot do."""
    from aelab.runs.runfolder import RunFolder, load_model

    model = load_model(run, device)
    if not able(model):
        raise UserError(f"{run} is a {RunFolder.open(run).config().model_name!r} run, {cannot}")
    return model


def _image_or_test_index(run: str, item: str):
    """The uint8 image (1, c, h, w) named by a file path, or by its index in the run's test set."""
    from aelab.data.load import read_inputs
    from aelab.runs.runfolder import RunFolder

    if item.isdigit() and not Path(item).exists():
        test = RunFolder.open(run).config().data.load_test()
        if int(item) >= len(test):
            raise UserError(f"test index {item} is out of range: the run's test set holds {len(test)} images")
        return test.images[int(item):int(item) + 1]
    return read_inputs([item]).images[:1]


def _check_new_output(out: Path, overwrite: bool) -> None:
    from aelab.storage import files

    files.refuse_link(out)
    if out.exists() and not overwrite and (out.is_file() or any(out.iterdir())):
        raise UserError(f"{out} already exists; choose another --out or pass --overwrite")
    if out.suffix not in ("", ".png", ".npy"):
        raise UserError(f"cannot write {out.suffix} files; give --out a folder, FILE.png (a grid) or FILE.npy")


def _write_images(images, out: Path) -> None:
    """Images to FILE.npy, a grid FILE.png (10 a row), or a folder of 00000.png, 00001.png, ..."""
    from aelab.pictures.images import save_images, save_png, tile

    if out.suffix == ".npy":
        _write_npy(images, out)
    elif out.suffix == ".png":
        cols = min(10, len(images))
        save_png(tile(images, -(-len(images) // cols), cols), out)
    else:
        save_images(images, out, [f"{i:05d}.png" for i in range(len(images))])


def _write_npy(array, out: Path) -> None:
    import numpy as np

    from aelab.storage import files

    with files.atomic(out) as f:
        np.save(f, array)


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "info": cmd_info, "models": cmd_models, "compare": cmd_compare,
            "report": cmd_report,
            "reconstruct": cmd_apply, "encode": cmd_apply, "decode": cmd_apply,
            "sample": cmd_sample, "interpolate": cmd_interpolate, "denoise": cmd_apply, "export": cmd_export,
            "activations": cmd_activations, "sweep": cmd_sweep, "score": cmd_score}
