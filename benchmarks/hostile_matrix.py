"""The hostile matrix: what a hostile or careless user does to each surface of aelab, run as real processes with
timeouts, and how each ends. Prints one row per surface:

    clean          one line `aelab: error: ...` and exit 2 (a refusal), or the right result with nothing else said
    traceback      a Python traceback, or an exit code other than 0 and 2
    silent/wrong   accepted what must be refused, said more than one line, or let a warning through as noise
    hang           still running at its timeout

then each case that is not clean, with the first line it said (every case's goes to stderr). The Python API
(estimators' load) is clean when it raises ValueError, OSError or UserError in one line. Every aelab process runs
with one thread on a 600/200-image subset of Fashion-MNIST; trackers are only pointed at the loopback address
(127.0.0.1:9 is a closed port). Rerun after any change:

    OMP_NUM_THREADS=1 python benchmarks/hostile_matrix.py [--jobs 2] [--only SURFACE] [--keep DIR]

With --keep, DIR/logs holds every case's whole stderr (`grep -l Warning DIR/logs/*` finds any warning let out).
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SRC = Path(__file__).resolve().parents[1] / "src"
FASHION = Path("/usr/share/datasets/fashion-mnist")
OUTCOMES = ("clean", "traceback", "silent/wrong", "hang")
TORCHRUN_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "AELAB_DIST_TIMEOUT",
                 "MLFLOW_TRACKING_URI")


@dataclass
class Case:
    surface: str
    name: str
    argv: list            # aelab's arguments, or ["-c", CODE] for a Python snippet
    expect: str = "refuse"  # refuse: one line, exit 2; ok: exit 0, quiet stderr; either: one of those
    env: dict = field(default_factory=dict)
    timeout: float = 60
    check: object = None  # for ok: a function of the work folder that says whether the result is right


def classify(case: Case, rc: int | None, out: str, err: str, work: Path) -> str:
    if rc is None:
        return "hang"
    if "Traceback" in out + err or rc not in (0, 2):
        return "traceback"
    lines = err.splitlines()
    one_line = rc == 2 and len(lines) == 1 and lines[0].startswith("aelab")
    noisy = any("Warning" in line or line.startswith("aelab: warning") for line in lines)
    ok = rc == 0 and not noisy and (case.check is None or case.check(work))
    if case.expect == "refuse":
        return "clean" if one_line else "silent/wrong"
    if case.expect == "ok":
        return "clean" if ok else "silent/wrong"
    return "clean" if one_line or ok else "silent/wrong"


def run_case(case: Case, work: Path) -> tuple[str, str, float]:
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS}
    env.update({"PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", **case.env})
    command = [sys.executable, *case.argv] if case.argv[0] == "-c" else [sys.executable, "-m", "aelab", *case.argv]
    started = time.monotonic()
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=work, timeout=case.timeout)
        rc, out, err = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as e:
        rc, out, err = None, _text(e.stdout), _text(e.stderr)
    took = time.monotonic() - started
    name = "".join(ch if ch.isalnum() else "_" for ch in f"{case.surface} {case.name}")[:120]
    (work / "logs" / f"{name}.err").write_text(err)  # every case's whole stderr, to grep when --keep keeps them
    outcome = classify(case, rc, out, err, work)
    said = (err.strip().splitlines() or out.strip().splitlines() or ["(nothing)"])
    first = next((line for line in said if "Error" in line and not line.startswith(" ")), said[-1] if
                 outcome == "traceback" else said[0])
    return outcome, f"rc {rc}, {took:.0f} s: {first[:230]}", took


def _text(data) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


# -- the material the cases work on ------------------------------------------------------------------------------

def prepare(work: Path) -> None:
    """Tiny data, one trained run of each kind the cases need, and damaged copies made from them."""
    from aelab.data.load import load_dataset

    train, test = load_dataset(FASHION)
    np.savez(work / "small.npz", x_train=train.images[:600, 0].numpy(), y_train=train.labels[:600].numpy(),
             x_test=test.images[:200, 0].numpy(), y_test=test.labels[:200].numpy())
    rng = np.random.default_rng(0)
    np.save(work / "few.npy", test.images[:10, 0].numpy())
    for i, text in enumerate(PLUGINS.values()):
        (work / f"plugin{i}.py").write_text(text)
    (work / "plugin_ok.py").write_text(GOOD_HEAD + "@dataclass\nclass C(AEConfig):\n    width: int = 3\n\n"
                                       "class Mine(Autoencoder):\n    Config = C\n\nregister('mine', Mine)\n")
    np.save(work / "exists.npy", np.zeros(3))
    np.save(work / "vectors.npy", rng.standard_normal((400, 16)).astype(np.float32))
    bad = rng.standard_normal((400, 16)).astype(np.float32)
    bad[3, 4] = np.nan
    np.save(work / "vectors_nan.npy", bad)
    np.save(work / "vectors_inf.npy", np.full((400, 16), np.inf, dtype=np.float32))
    np.save(work / "vectors_one.npy", rng.standard_normal((1, 16)).astype(np.float32))
    np.save(work / "vectors_wide.npy", rng.standard_normal((5, 17)).astype(np.float32))
    np.save(work / "codes_wide.npy", np.zeros((3, 21), np.float32))
    np.save(work / "codes_none.npy", np.zeros((0, 20), np.float32))
    np.save(work / "codes_nan.npy", np.full((3, 20), np.nan, np.float32))
    np.save(work / "images_empty.npy", np.zeros((0, 28, 28), np.uint8))
    np.save(work / "images_2d.npy", np.zeros((28, 28), np.float64) + 2.5)
    (work / "not_an_image.png").write_text("not a png")
    (work / "empty.npz").write_bytes(b"")
    (work / "list.json").write_text("[1, 2]")
    (work / "notes").mkdir()
    (work / "notes" / "mine.txt").write_text("not aelab's")
    (work / "taken.txt").write_text("a file")
    (work / "elsewhere").mkdir()
    (work / "link").symlink_to(work / "elsewhere")
    for folder, names in (("mine_sweep", ("sweep.md", "fvu_vs_l0.png")), ("mine_cmp", ("compare.md",)),
                          ("sw_linkrun", ()), ("cmp_linkruns", ())):
        (work / folder).mkdir()
        for name in names:
            (work / folder / name).write_text("the user's own")
    (work / "sw_linkrun" / "k4").symlink_to(work / "elsewhere")
    (work / "cmp_linkruns" / "runs").symlink_to(work / "elsewhere")
    (work / "acts_link.npy").symlink_to(work / "exists.npy")
    np.save(work / "user_acts.npy", np.ones(4))
    with gzip.open(work / "garbage.gz", "wb") as f:
        f.write(os.urandom(1000))

    base = [sys.executable, "-m", "aelab", "train", "--data", "small.npz", "--epochs", "1", "--threads", "1"]
    env = {**{k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS}, "PYTHONPATH": str(SRC),
           "OMP_NUM_THREADS": "1"}
    jobs = [[*base, "--out", "run"], [*base, "vae", "--latent", "20", "--out", "vae"],
            [*base, "sae", "--data", "vectors.npy", "--out", "vec"]]
    (work / "logs").mkdir()
    for i, job in enumerate(jobs):
        done = subprocess.run(job, cwd=work, env=env, check=True, capture_output=True, text=True, timeout=300)
        (work / "logs" / f"material_{i}.err").write_text(done.stderr)
    for name in ("ckpt_cut", "weights_cut", "config_list", "metrics_bad", "fresh", "report_nan", "report_text"):
        shutil.copytree(work / "run", work / name)
    for name, target in (("ckpt_cut", "checkpoint.safetensors"), ("weights_cut", "model.safetensors")):
        path = work / name / target
        path.write_bytes(path.read_bytes()[:1000])
    (work / "config_list" / "config.json").write_text("[]")
    (work / "metrics_bad" / "metrics.jsonl").write_text('{"epoch": 1, "train_loss": 0.3}\nnot json\n')
    (work / "report_nan" / "metrics.jsonl").write_text('{"epoch": 1, "train_loss": NaN, "test_loss": Infinity}\n')
    (work / "report_text" / "metrics.jsonl").write_text('{"epoch": 1, "train_loss": "abc"}\n')
    for extra in ("checkpoint.safetensors", "model.safetensors", "metrics.jsonl", "eval.json"):  # as if killed
        (work / "fresh" / extra).unlink(missing_ok=True)
    (work / "estimator.safetensors").write_bytes(b"")
    subprocess.run([sys.executable, "-c", "import numpy as np; from aelab.estimators import PCA; "
                    "PCA(4).fit(np.load('small.npz')['x_train'][:200]).save('pca.safetensors')"],
                   cwd=work, env=env, check=True, capture_output=True, timeout=300)
    whole = (work / "pca.safetensors").read_bytes()
    (work / "pca_cut.safetensors").write_bytes(whole[:len(whole) // 2])
    (work / "pca_header.safetensors").write_bytes((10 ** 12).to_bytes(8, "little") + whole[8:])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def exists(*names):
    return lambda work: all((work / name).exists() for name in names)


def folder_cases(tiny: list) -> list[Case]:
    """The folders that are not run folders (a sweep's, a comparison's, the activations' files), links into each,
    and what a sweep must check before it trains."""
    vectors = ["--data", "vectors.npy", "--epochs", "1", "--threads", "1"]
    cases = [Case("sweep", name, ["sweep", "sae", *vectors, *args], timeout=120) for name, args in (
        ("--out a link", ["--grid", "k=4", "--out", "link"]),
        ("--out a link, --overwrite", ["--grid", "k=4", "--out", "link", "--overwrite"]),
        ("--out a folder with the user's sweep.md", ["--grid", "k=4", "--out", "mine_sweep"]),
        ("the same, --overwrite", ["--grid", "k=4", "--out", "mine_sweep", "--overwrite"]),
        ("a run folder k4 that is a link", ["--grid", "k=4", "--out", "sw_linkrun"]),
        ("k 40 over latent 32", ["--set", "latent=32", "--grid", "k=4,40", "--out", "sw1"]),
        ("22 500 combinations", ["--grid", "k=" + ",".join(map(str, range(1, 151))), "--grid",
                                 "latent=" + ",".join(map(str, range(200, 350))), "--out", "sw2"]),
        ("--data and --set data.path", ["--set", "data.path=/etc/passwd", "--grid", "k=4", "--out", "sw3"]))]
    limited = ("import resource, sys\nresource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))\n"
               "from aelab.cli import main\nsys.exit(main(['sweep', 'sae', '--data', 'vectors.npy', '--grid', "
               "'latent=1500000', '--epochs', '1', '--threads', '1', '--out', 'sw4']))\n")
    cases.append(Case("sweep", "latent=1500000 under a 6 GB address-space limit", ["-c", limited], timeout=120))
    cases.append(Case("sweep", "images", ["sweep", "sae", "--data", "small.npz", "--epochs", "1", "--threads", "1",
                                          "--grid", "k=4", "--set", "latent=16", "--out", "sw5"], expect="ok",
                      timeout=180, check=lambda w: "| bce |" in (w / "sw5" / "sweep.md").read_text()
                      and (w / "sw5" / "bce_vs_l0.png").is_file()))
    compare = ["compare", "pca", "--latent", "2", "--data", "small.npz", "--threads", "1"]
    cases += [Case("compare folders", name, [*compare, *args]) for name, args in (
        ("--out a link, --overwrite", ["--out", "link", "--overwrite"]),
        ("--out a folder with the user's compare.md", ["--out", "mine_cmp"]),
        ("the same, --overwrite", ["--out", "mine_cmp", "--overwrite"]),
        ("--out a run folder (its report.html)", ["--out", "run", "--overwrite"]),
        ("runs/ a link", ["--out", "cmp_linkruns"]))]
    acts = ["activations", "run", "--layer", "encoder.6", "--split", "test"]
    cases += [Case("activations", name, args) for name, args in (
        ("--out a link, --overwrite", [*acts, "--out", "acts_link.npy", "--overwrite"]),
        ("--out the user's .npy, --overwrite", [*acts, "--out", "user_acts.npy", "--overwrite"]),
        ("--out in a linked folder", [*acts, "--out", "link/acts.npy"]),
        ("an SAE's encoder.0", ["activations", "vec", "--layer", "encoder.0", "--out", "a1.npy"]))]
    cases.append(Case("activations", "a layer's activations", [*acts, "--out", "a2.npy"], expect="ok",
                      check=exists("a2.npy", "a2.index.npy", "a2.json")))
    cases.append(Case("report", "a measure that is text", ["report", "report_text"]))
    cases.append(Case("train", "--data and --set data.path", ["train", *tiny, "--set", "data.path=/etc/passwd",
                                                              "--out", "new_set"]))
    return cases


# plugin files a careless author writes, named in AELAB_PLUGINS: each must end every command in one line
GOOD_HEAD = ("from __future__ import annotations\nfrom dataclasses import dataclass\n"
             "from aelab.models import AEConfig, Autoencoder, register\n")
PLUGINS = {
    "raises RuntimeError": "raise RuntimeError('boom')\n",
    "raises ValueError": "raise ValueError('bad value')\n",
    "recurses without end": "def f():\n    return f()\nf()\n",
    "calls sys.exit(0)": "import sys\nsys.exit(0)\n",
    "has a syntax error": "def (:\n",
    "takes a baseline's name": GOOD_HEAD + "register('pca', Autoencoder)\n",
    "a Config field without a default": GOOD_HEAD + "@dataclass\nclass C(AEConfig):\n    width: int\n\n"
        "class M(Autoencoder):\n    Config = C\n\nregister('mine', M)\n",
    "a check raising ValueError": GOOD_HEAD + "@dataclass\nclass C(AEConfig):\n    width: int = 0\n\n"
        "    def check(self):\n        raise ValueError('width')\n\nclass M(Autoencoder):\n    Config = C\n\n"
        "register('mine', M)\n",
}


def plugin_cases(tiny: list) -> list[Case]:
    """Each plugin file of PLUGINS (written by prepare) named in AELAB_PLUGINS: `aelab models`, and training the
    plugin's model where it registers one; and a plugin written the ordinary way, which must load."""
    cases = []
    for i, (name, _) in enumerate(PLUGINS.items()):
        argv = ["train", "mine", *tiny, "--out", f"plug{i}"] if "Config" in name or "check" in name else ["models"]
        cases.append(Case("plugins", name, argv, env={"AELAB_PLUGINS": f"plugin{i}.py"}))
    cases.append(Case("plugins", "postponed annotations and a @dataclass Config", ["models"], expect="ok",
                      env={"AELAB_PLUGINS": "plugin_ok.py"}))
    return cases


def cases() -> list[Case]:
    tiny = ["--data", "small.npz", "--epochs", "1", "--threads", "1"]
    fresh = (f"new{i}" for i in itertools.count())  # a folder of its own for every case that may write one

    def train(name, *args, **kw):
        return Case("train", name, ["train", *tiny, "--out", next(fresh), *args], **kw)

    def resume(name, *args, **kw):
        return Case("resume", name, ["train", "--threads", "1", "--resume", *args], **kw)

    compare = [Case("compare", name, ["compare", *args, "--data", "small.npz", "--threads", "1"], timeout=60)
               for name, args in (
                   ("unknown method", ["xyz", "--out", "cmp1"]),
                   ("--latents 0", ["pca", "--latents", "0", "--out", "cmp2"]),
                   ("--latents a,b", ["pca", "--latents", "a,b", "--out", "cmp3"]),
                   ("--run without =", ["ae", "--run", "run", "--out", "cmp4"]),
                   ("--run to a missing run", ["ae", "--run", "ae=nope", "--out", "cmp5"]),
                   ("--run of another code size", ["ae", "--run", "ae=run", "--latent", "30", "--out", "cmp6"]),
                   ("--run of a VAE named ae", ["ae", "--run", "ae=vae", "--latent", "20", "--out", "cmp7"]),
                   ("--out an existing file", ["pca", "--out", "taken.txt"]))]
    compare.append(Case("compare", "a run and PCA at its code size", ["compare", "pca", "--run", "ae=run", "--latent",
                                                                      "20", "--data", "small.npz", "--threads", "1",
                                                                      "--out", "cmp"],
                        expect="ok", check=exists("cmp/compare.md", "cmp/report.html")))
    cs = [
        Case("train", "--lr 30 (default data)", ["train", "--epochs", "1", "--threads", "1", "--lr", "30", "--out",
                                                 "lr30"], expect="either", timeout=240),
        train("--lr inf", "--lr", "inf"), train("--lr -1", "--lr", "-1"), train("--epochs 0", "--epochs", "0"),
        train("--batch-size 0", "--batch-size", "0"), train("--threads 0", "--threads", "0"),
        train("--set train.seed=-1", "--set", "train.seed=-1"), train("--set model.latent=nan", "--set",
                                                                          "model.latent=nan"),
        train("--set no.such=1", "--set", "no.such=1"), train("--config missing.toml", "--config", "missing.toml"),
        train("--config holding a list", "--config", "list.json"), train("--data missing", "--data", "missing.npz"),
        train("--data an empty .npz", "--data", "empty.npz"), train("--data a random .gz", "--data", "garbage.gz"),
        train("--out an existing file", "--out", "taken.txt"), train("--out a finished run", "--out", "run"),
        train("--overwrite a folder not aelab's", "--out", "notes", "--overwrite"),
        train("--device cuda (none here)", "--device", "cuda"), train("--device bogus", "--device", "bogus"),
        train("--precision fp16", "--precision", "fp16"), train("unknown model", "xyz"),
        resume("missing folder", "nope"), resume("not a run", "notes"), resume("changing --latent", "run",
                                                                               "--latent", "5"),
        resume("killed before its first epoch", "fresh", expect="ok", check=exists("fresh/eval.json")),
        resume("checkpoint cut short", "ckpt_cut", "--epochs", "2"), resume("metrics.jsonl damaged", "metrics_bad",
                                                                            "--epochs", "2"),
        resume("config.json a list", "config_list", "--epochs", "2"),
        Case("eval", "missing run", ["eval", "nope"]), Case("eval", "config.json a list", ["eval", "config_list"]),
        Case("eval", "weights cut short", ["eval", "weights_cut"]), Case("eval", "--data missing",
                                                                         ["eval", "run", "--data", "nope.npz"]),
        Case("eval", "--device cuda:7", ["eval", "run", "--device", "cuda:7"]),
        Case("eval", "a finished run", ["eval", "run", "--json"], expect="ok"),
        Case("encode/decode", "encode a missing image", ["encode", "run", "missing.png", "--out", "c.npy"]),
        Case("encode/decode", "encode a text file named .png", ["encode", "run", "not_an_image.png", "--out",
                                                                "c.npy"]),
        Case("encode/decode", "encode an empty .npy", ["encode", "run", "images_empty.npy", "--out", "c.npy"]),
        Case("encode/decode", "encode 2-D floats of 2.5", ["encode", "run", "images_2d.npy", "--out", "c.npy"]),
        Case("encode/decode", "encode over an existing file", ["encode", "run", "few.npy", "--out", "exists.npy"]),
        Case("encode/decode", "decode codes too wide", ["decode", "run", "codes_wide.npy", "--out", "d.png"]),
        Case("encode/decode", "decode zero codes", ["decode", "run", "codes_none.npy", "--out", "d.png"]),
        Case("encode/decode", "decode NaN codes", ["decode", "run", "codes_nan.npy", "--out", "d.png"]),
        Case("encode/decode", "reconstruct from a run cut short", ["reconstruct", "weights_cut", "few.npy",
                                                                   "--out", "r.png"]),
        Case("encode/decode", "reconstruct the test images", ["reconstruct", "run", "few.npy", "--out", "r.png"],
             expect="ok", check=exists("r.png")),
        Case("export", "missing run", ["export", "nope", "--out", "onnx1"]),
        Case("export", "weights cut short", ["export", "weights_cut", "--out", "onnx2"]),
        Case("export", "--out an existing file", ["export", "run", "--out", "taken.txt"]),
        Case("export", "--out a link to elsewhere", ["export", "run", "--out", "link"]),
        Case("export", "a finished run", ["export", "run", "--out", "onnx"], expect="ok",
             check=exists("onnx/encoder.onnx", "onnx/decoder.onnx")),
        Case("report", "missing folder", ["report", "nope"]),
        Case("report", "a folder not aelab's", ["report", "notes"]),
        Case("report", "metrics with NaN and Infinity", ["report", "report_nan"], expect="either"),
        Case("report", "--out over an existing file", ["report", "run", "--out", "taken.txt"]),
        Case("report", "config.json a list", ["report", "config_list"]),
        *compare,
        Case("vectors", "train on vectors with a NaN", ["train", "sae", *tiny, "--data", "vectors_nan.npy",
                                                        "--out", "v1"]),
        Case("vectors", "train on infinite vectors", ["train", "sae", *tiny, "--data", "vectors_inf.npy",
                                                      "--out", "v2"]),
        Case("vectors", "train on one vector", ["train", "sae", *tiny, "--data", "vectors_one.npy", "--out", "v3"]),
        Case("vectors", "encode vectors of another width", ["encode", "vec", "vectors_wide.npy", "--out", "v.npy"]),
        Case("vectors", "encode images with a vector run", ["encode", "vec", "few.npy", "--out", "v2.npy"]),
        Case("vectors", "encode vectors", ["encode", "vec", "vectors.npy", "--out", "v.npy"], expect="ok",
             check=exists("v.npy")),
    ]
    cs += folder_cases(tiny)
    cs += plugin_cases(tiny)
    for uri in ("http://127.0.0.1:9", "file:///proc/x", "bogus://x"):
        cs.append(train(f"--log mlflow at {uri}", "--log", "mlflow", env={"MLFLOW_TRACKING_URI": uri},
                        timeout=120))
        cs[-1].surface = "trackers"
    cs.append(Case("trackers", "--log tensorboard", ["train", *tiny, "--out", "tb", "--log", "tensorboard"],
                   expect="ok", check=exists("tb/tensorboard")))
    loopback = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29400"}
    for env in ({"WORLD_SIZE": "abc"}, {"WORLD_SIZE": "-3"}, {"WORLD_SIZE": "2"}, {"RANK": "1"},
                {"WORLD_SIZE": "2", "RANK": "5", **loopback}, {"WORLD_SIZE": "2", "RANK": "0", "MASTER_PORT": "1"},
                {"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "99999"},
                {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "x", **loopback}):
        cs.append(Case("torchrun env", " ".join(f"{k}={v}" for k, v in env.items() if (k, v) not in loopback.items()),
                       ["train", *tiny, "--out", next(fresh)], env=env, timeout=120))
    for rank in ("0", "1"):  # a rendezvous that cannot complete: the other rank never comes
        cs.append(Case("torchrun env", f"rank {rank} of 2 alone (AELAB_DIST_TIMEOUT=5)",
                       ["train", *tiny, "--out", next(fresh), "--device", "cpu"], timeout=120,
                       env={"WORLD_SIZE": "2", "RANK": rank, "MASTER_ADDR": "127.0.0.1",
                            "MASTER_PORT": str(free_port()), "AELAB_DIST_TIMEOUT": "5"}))
    load = ("import sys\nfrom aelab.errors import UserError\nfrom aelab.estimators import {cls}\n"
            "try:\n    {cls}.load({path!r}).transform(__import__('numpy').zeros((2, 28, 28), 'uint8'))\n"
            "except (ValueError, OSError, UserError) as e:\n"
            "    print(f'aelab: {{e}}', file=sys.stderr)\n    sys.exit(2)\n")
    for name, cls, path in (("an empty file", "PCA", "estimator.safetensors"), ("a text file", "PCA", "list.json"),
                            ("a run's weights", "Autoencoder", "run/model.safetensors"),
                            ("cut in half", "PCA", "pca_cut.safetensors"),
                            ("a header length of 10**12", "PCA", "pca_header.safetensors"),
                            ("a PCA as a LogisticPCA", "LogisticPCA", "pca.safetensors"),
                            ("a missing file", "PCA", "nope.safetensors")):
        cs.append(Case("estimators' load", name, ["-c", load.format(cls=cls, path=path)]))
    cs.append(Case("estimators' load", "a saved PCA", ["-c", load.format(cls="PCA", path="pca.safetensors")],
                   expect="ok"))
    return cs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2, help="cases run at once (default 2)")
    parser.add_argument("--only", help="surfaces, comma separated, e.g. trackers,sweep")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    args = parser.parse_args()
    sys.path.insert(0, str(SRC))
    work = args.keep or Path(tempfile.mkdtemp(prefix="aelab-hostile-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    prepare(work)
    chosen = [c for c in cases() if args.only is None or c.surface in args.only.split(",")]
    print(f"{len(chosen)} cases, material ready in {time.monotonic() - started:.0f} s", file=sys.stderr)
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda c: run_case(c, work), chosen))
    surfaces = list(dict.fromkeys(c.surface for c in chosen))
    print("| surface | cases | " + " | ".join(OUTCOMES) + " |")
    print("|---|---|" + "---|" * len(OUTCOMES))
    for surface in surfaces:
        outcomes = [r[0] for c, r in zip(chosen, results) if c.surface == surface]
        print(f"| {surface} | {len(outcomes)} | " + " | ".join(str(outcomes.count(o)) for o in OUTCOMES) + " |")
    total = [r[0] for r in results]
    print(f"| **all** | {len(total)} | " + " | ".join(str(total.count(o)) for o in OUTCOMES) + " |")
    for c, (outcome, said, _) in zip(chosen, results):
        print(f"{outcome:>12}  {c.surface} / {c.name}: {said}", file=sys.stderr)
    failing = [(c, r) for c, r in zip(chosen, results) if r[0] != "clean"]
    if failing:
        print("\nnot clean:")
        for c, (outcome, said, _) in failing:
            print(f"- {c.surface} / {c.name}: {outcome} ({said})")
    print(f"\n{len(chosen)} cases in {time.monotonic() - started:.0f} s; slowest "
          f"{max(r[2] for r in results):.0f} s", file=sys.stderr)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"cases": len(total), **{o: total.count(o) for o in OUTCOMES}}), file=sys.stderr)


if __name__ == "__main__":
    main()
