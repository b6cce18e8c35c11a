"""report.html in a real browser: Debian's Chromium driven by playwright, pages of real short runs opened from
file:// with every network request recorded. The decoder the page runs must agree with the model's to 1/255."""

from __future__ import annotations

import io
import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aelab.cli import main
from conftest import RUN_EPOCHS
from support.process import assert_user_error, in_process

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package (make setup); a browser downloaded at run time would not do
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]  # containers often have a small /dev/shm

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.is_file(), f"{CHROMIUM} missing: `apt-get install chromium` (make setup does it)"
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class Page:
    """A page opened from disk, with its console errors and every request it made."""

    def __init__(self, browser, path: Path):
        self.path = Path(path).resolve()
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.errors, self.requests = [], []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.goto(self.path.as_uri())
        self.page.wait_for_function("window.aelab && document.querySelectorAll('section').length > 1")

    def js(self, expression: str, arg=None):
        return self.page.evaluate(expression, arg)

    def pixels(self, selector: str) -> np.ndarray:
        """The red channel of a canvas' own pixels, as the page drew them (grey images: all channels agree)."""
        rgba = self.js("s => { const c = document.querySelector(s); "
                       "return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data); }", selector)
        return np.array(rgba, np.uint8).reshape(-1, 4)[:, 0]

    def drawn(self) -> dict[str, int]:
        """What each chart (by title) and the map drew, once all have drawn: the page's own data-drawn counts.
        Polled from here: the page's policy forbids the eval that wait_for_function's polling needs."""
        counts = "Object.fromEntries(Array.from(document.querySelectorAll('#charts .chart, #map')).map(e => " \
                 "[e.id || e.querySelector('.title').textContent, e.dataset.drawn]))"
        for _ in range(50):
            drawn = self.js(counts)
            if drawn and None not in drawn.values():
                return {k: int(v) for k, v in drawn.items()}
            self.page.wait_for_timeout(100)
        raise AssertionError(f"the page never said what it drew: {drawn}")

    def screenshot(self, selector: str) -> np.ndarray:
        """The element as the browser shows it on screen, (h, w, 3) uint8."""
        self.page.locator(selector).scroll_into_view_if_needed()
        png = self.page.locator(selector).screenshot()
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))

    def assert_offline_and_clean(self):
        assert self.requests == [self.path.as_uri()], self.requests  # the file itself, nothing else
        assert self.errors == [], self.errors


def tiny_run(tmp_path_factory, subset_npz, name: str, **settings) -> Path:
    """A one-epoch run on the subset, trained in this process by the machinery `aelab train` uses."""
    from aelab.experiments.pipeline import train
    from aelab.runs.settings import resolve

    out = tmp_path_factory.mktemp("runs") / name
    train(resolve(name, None, {"data.path": str(subset_npz), "train.epochs": 1, **settings}), out=out)
    return out


@pytest.fixture(scope="module")
def conv_run(tmp_path_factory, subset_npz, one_thread):
    return tiny_run(tmp_path_factory, subset_npz, "ae", **{"model.arch": "conv", "model.channels": "8,16",
                                                            "model.latent": 8, "train.grid_every": 0})


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory, subset_npz, one_thread):
    # the eval-mode train terms after epochs 1 and 2 only: the loss, reconstruction and KL charts have a short series
    return tiny_run(tmp_path_factory, subset_npz, "vae", **{"model.latent": 2, "train.epochs": 3,
                                                             "train.train_eval_every": 2})


@pytest.fixture(scope="module")
def sparse_run(tmp_path_factory, subset_npz, one_thread):
    """The chapter's model by `aelab train` (cli.main, in this process), 4 epochs, measured in eval mode after epochs
    1, 2 and 4, not 3."""
    out = tmp_path_factory.mktemp("runs") / "sparse"
    assert main(["train", "--data", str(subset_npz), "--epochs", "4", "--seed", "0", "--threads", "1", "--out",
                 str(out), "--set", "train.train_eval_every=2"]) == 0
    assert [("train_eval_loss" in json.loads(line)) for line in (out / "metrics.jsonl").read_text().splitlines()] \
        == [True, True, False, True]
    return out


def page_data(path: Path) -> dict:
    """The JSON a page carries, as reports/page.py put it there."""
    html = path.read_text()
    start = html.index(">", html.index('<script id="aelab-data"')) + 1
    return json.loads(html[start:html.index("</script>", start)].replace("<\\/", "</"))


def colour_pixels(image: np.ndarray, colour: str, tolerance: int = 40) -> int:
    """How many pixels of an (h, w, 3) image are within `tolerance` of the CSS colour #rrggbb in every channel."""
    rgb = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(image.astype(int) - rgb).max(axis=-1) <= tolerance).sum())


def assert_decoded_like_the_model(page: Page, model):
    """The page's decoded image equals the model's decoding of the code the page says it decoded, within 1/255."""
    code = np.array(json.loads(page.js("document.getElementById('decoded').dataset.code")), np.float32)
    expected = np.rint(model.decode(code[None])[0].ravel() * 255)  # numpy in, numpy out
    assert np.abs(page.pixels("#decoded").astype(int) - expected).max() <= 1
    return code


def click_map(page: Page, fx: float, fy: float):
    page.js("document.getElementById('map').scrollIntoView()")
    box = page.page.locator("#map").bounding_box()
    page.page.mouse.click(box["x"] + fx * box["width"], box["y"] + fy * box["height"])


def test_run_page_offline_grids_and_clicks_decoded_like_the_mlp(browser, trained_run, trained_model, fashion):
    assert (trained_run / "report.html").is_file()  # aelab train wrote it
    page = Page(browser, trained_run / "report.html")
    assert page.js("document.querySelector('#measure-bce .n').textContent").startswith("floor 0.2")
    # measures and charts by their names, with what they say (reports.report.MEASURES), not by their keys
    assert page.js("[...document.querySelectorAll('#measure-psnr div')].map((d) => d.textContent)")[::2] == [
        "PSNR (dB)", "peak signal 1"]
    assert page.js("document.querySelector('#charts .title').title") == "what training minimises"
    assert page.js("document.querySelectorAll('#charts canvas').length") >= 4  # loss, bce, mse, psnr
    chart = page.page.locator("#charts canvas").first.bounding_box()
    page.page.mouse.move(chart["x"] + chart["width"] - 20, chart["y"] + chart["height"] / 2)  # the last epoch
    assert f"epoch {RUN_EPOCHS}" in page.page.locator("#charts .tip").first.inner_text()

    # the epoch slider shows another epoch's grid
    last = page.js("document.getElementById('grid-recon').src")
    page.js("s => { s.value = 0; s.dispatchEvent(new Event('input')); }", page.page.locator("#epoch-slider").element_handle())
    assert page.js("document.getElementById('grid-recon').src") != last
    assert "epoch 1" in page.page.locator(".controls .epoch").inner_text()

    # hovering a point shows that test image and its reconstruction
    page.js("document.getElementById('map').scrollIntoView()")
    page.page.mouse.move(*page.js("aelab.pointOnScreen(5)"))
    index = int(page.js("document.querySelector('[data-index]').dataset.index"))
    test = fashion[1]
    assert np.array_equal(page.pixels("#hover-real"), test.images[index, 0].numpy().ravel())
    recon = np.rint(trained_model.reconstruct(test.images[index:index + 1])[0].numpy().ravel() * 255)
    assert np.abs(page.pixels("#hover-recon").astype(int) - recon).max() <= 1

    # a click on a point takes its code; a click on an empty place decodes the mean code moved along the axes
    page.page.mouse.click(*page.js("aelab.pointOnScreen(5)"))
    code = assert_decoded_like_the_model(page, trained_model)
    assert np.allclose(code, trained_model.encode(test.images[index:index + 1])[0].numpy(), atol=1e-5)
    click_map(page, 0.03, 0.03)
    assert "map point" in page.js("document.getElementById('decoded-label').textContent")
    corner = assert_decoded_like_the_model(page, trained_model)
    assert np.abs(corner - code).max() > 0.1
    page.assert_offline_and_clean()


def test_conv_decoder_in_the_page_matches_torch(browser, conv_run):
    from aelab.runs.runfolder import load_model

    model = load_model(conv_run)
    page = Page(browser, conv_run / "report.html")
    assert page.js("document.getElementById('grid-recon')") is None  # --grid-every 0: no grids, no section
    for fx, fy in ((0.5, 0.5), (0.9, 0.2), (0.1, 0.8)):
        click_map(page, fx, fy)
        assert_decoded_like_the_model(page, model)
    page.assert_offline_and_clean()


def test_vae_page_strip_sliders_and_new_samples(browser, vae_run):
    from aelab.runs.runfolder import load_model

    model = load_model(vae_run)
    page = Page(browser, vae_run / "report.html")
    assert "the code itself" in page.page.locator("section", has_text="Latent explorer").inner_text()  # latent 2
    click_map(page, 0.2, 0.3)
    click_map(page, 0.8, 0.7)
    strip = [page.pixels(f"#strip canvas:nth-child({i + 1})") for i in range(10)]
    assert np.array_equal(strip[-1], page.pixels("#decoded"))  # the strip ends at the current code
    assert len({s.tobytes() for s in strip}) > 5 and all(s.std() > 0 for s in strip)

    # a slider moves one number of the code, and the page decodes the new code
    before = np.array(page.js("aelab.current"))
    page.js("s => { s.value = +s.value + 1; s.dispatchEvent(new Event('input')); }",
            page.page.locator("input[data-dim='1']").element_handle())
    after = np.array(page.js("aelab.current"))
    assert after[0] == before[0] and after[1] != before[1]
    assert_decoded_like_the_model(page, model)

    samples = page.pixels("#samples canvas:nth-child(3)")
    page.page.click("#new-samples")
    fresh = page.pixels("#samples canvas:nth-child(3)")
    assert samples.std() > 0 and fresh.std() > 0 and not np.array_equal(samples, fresh)
    assert page.js("document.getElementById('show-prior') !== null")
    page.assert_offline_and_clean()


TRAIN, TEST, EVAL_MODE = "#2f6fdf", "#e8773a", "#7f8da3"  # the series' colours in page.js


@pytest.mark.parametrize("run, charts", [("sparse_run", {"loss", "BCE", "MSE", "PSNR"}),
                                         ("vae_run", {"loss", "reconstruction", "KL", "BCE", "MSE", "PSNR"})])
def test_every_chart_and_the_map_draw_their_points(browser, request, run, charts):
    run = request.getfixturevalue(run)
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    page = Page(browser, run / "report.html")
    drawn = page.drawn()
    assert {title.split()[0] for title in drawn if title != "map"} == charts, drawn
    assert all(n > 0 for n in drawn.values()), drawn
    assert drawn["map"] == 1000  # every test code, each on the map
    # the loss chart: train and test every epoch, eval mode where it was measured
    measured = sum("train_eval_loss" in r for r in history)
    assert 0 < measured < len(history)
    assert drawn[next(t for t in drawn if t.startswith("loss"))] == 2 * len(history) + measured

    # on screen: the three series' colours inside the loss chart's plot area (the canvas less its axes' margins)
    chart = page.screenshot("#charts .chart:first-child canvas")[8:-24, 54:-12]
    for colour in (TRAIN, TEST, EVAL_MODE):
        assert colour_pixels(chart, colour, 30) > 20, colour
    # every point of the map lies inside its frame, and the frame shows the class colours
    box = page.page.locator("#map").bounding_box()
    points = np.array(page.js("Array.from({length: 1000}, (_, i) => aelab.pointOnScreen(i))"))
    assert (points[:, 0] >= box["x"]).all() and (points[:, 0] <= box["x"] + box["width"]).all()
    assert (points[:, 1] >= box["y"]).all() and (points[:, 1] <= box["y"] + box["height"]).all()
    picture = page.screenshot("#map")
    assert colour_pixels(picture, "#4e79a7", 20) > 50 and colour_pixels(picture, "#f28e2b", 20) > 50
    page.assert_offline_and_clean()


def test_comparison_page_sorts_its_table(browser, subset_npz, tmp_path):
    out = tmp_path / "cmp"
    assert main(["compare", "pca", "--latents", "2,5", "--data", str(subset_npz), "--out", str(out)]) == 0
    page = Page(browser, out / "report.html")
    column = "Array.from(document.querySelectorAll('#leaderboard th')).findIndex(h => h.dataset.key === 'latent')"
    latents = f"Array.from(document.querySelectorAll('#leaderboard tbody tr')).map(r => +r.children[{column}].textContent)"
    assert page.js(latents) == [2, 5]
    page.page.click("#leaderboard th[data-key=latent]")
    page.page.click("#leaderboard th[data-key=latent]")  # the second click sorts descending
    assert page.js(latents) == [5, 2]
    # figure 12.3 at 2 and 5, error against size, and PCA's samples by its default sampler at each size
    assert page.js("document.querySelectorAll('img').length") == 5
    grids = page.js("Array.from(document.querySelectorAll('#sample-grids img')).map(i => [i.alt, i.naturalWidth])")
    assert grids == [["pca samples by gmm", 280], ["pca samples by gmm", 280]]
    assert page.js("Array.from(document.querySelectorAll('#leaderboard th')).map(h => h.dataset.key)")[:3] == \
        ["method", "sampler", "latent"]
    assert page.screenshot("#sample-grids figure:first-child img").std() > 10  # drawn, not blank
    page.assert_offline_and_clean()


def test_report_command_rebuilds_old_runs_and_refuses_anything_else(trained_run, tmp_path, capsys):
    old = tmp_path / "old"
    shutil.copytree(trained_run, old)
    (old / "report.html").unlink()  # a run trained before report.html existed
    assert main(["report", str(old)]) == 0
    assert (old / "report.html").stat().st_size > 100_000
    assert main(["report", str(old), "--out", str(tmp_path / "page.html")]) == 0
    capsys.readouterr()
    for args, words in (([str(old), "--out", str(old / "report.md")], ["FILE.html"]),
                        ([str(old), "--out", str(tmp_path / "page.html")], ["already exists", "--overwrite"]),
                        ([str(tmp_path / "missing")], ["does not exist"]),
                        ([str(tmp_path)], ["neither a run folder", "aelab compare --out"])):
        assert main(["report", *args]) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith("aelab: error:") and all(w in err[0] for w in words), err


def test_long_runs_keep_a_hundred_grids_first_and_last(trained_run, tmp_path):
    from aelab.reports.page import MAX_FRAMES, epoch_grids

    from aelab.runs.runfolder import RunFolder

    grid, run = RunFolder(trained_run).grids()[0], RunFolder(tmp_path)
    run.grids_path.mkdir()
    for epoch in range(1, 151):
        shutil.copy(grid, run.grid(epoch))
    grids = epoch_grids(run.grids())
    assert len(grids["frames"]) == MAX_FRAMES and grids["epochs"][0] == 1 and grids["epochs"][-1] == 150


# -- hostile page inputs: `aelab report RUN` on a damaged copy of a run ------------------------------------------

def png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height grey pixels and holds none: what a decompression bomb's reader sees first."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def edit_metrics(run: Path, change) -> list[dict]:
    """metrics.jsonl rewritten with change(epoch, record) applied to each record (NaN written as JSON's NaN)."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for record in records:
        change(record["epoch"], record)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


@pytest.fixture
def damaged(trained_run, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    return run


def test_a_record_without_seconds_drops_the_time_not_the_page(damaged, capsys):
    edit_metrics(damaged, lambda epoch, r: epoch == 2 and r.pop("seconds"))
    result = in_process(["report", damaged], capsys)
    assert result.returncode == 0 and result.stderr == "", result.stderr[-2000:]
    data = page_data(damaged / "report.html")
    assert data["facts"]["seconds"] is None and len(data["history"]) == RUN_EPOCHS


def test_a_value_that_is_not_a_number_is_a_gap_in_its_curve(browser, damaged, capsys):
    """NaN (a diverged epoch's measure); text in its place is refused (tests/storage/test_runfolder.py)."""
    edit_metrics(damaged, lambda epoch, r: epoch == 2 and r.update(train_loss=float("nan")))
    result = in_process(["report", damaged], capsys)
    assert result.returncode == 0 and result.stderr == "", result.stderr[-2000:]
    assert [r["train_loss"] is None for r in page_data(damaged / "report.html")["history"]] == [False, True, False]
    page = Page(browser, damaged / "report.html")
    loss = next(n for title, n in page.drawn().items() if title.startswith("loss"))
    assert loss == 2 * RUN_EPOCHS - 1 + 1  # train less the gap, test every epoch, eval mode after epoch 1
    page.assert_offline_and_clean()


def test_a_chart_with_no_finite_value_says_so(browser, damaged, capsys):
    edit_metrics(damaged, lambda epoch, r: r.update(test_psnr=float("inf")))
    assert in_process(["report", damaged], capsys).returncode == 0
    page = Page(browser, damaged / "report.html")
    assert page.drawn()["PSNR (dB)"] == 0
    psnr = page.page.locator("#charts .chart", has_text="PSNR")
    assert "no epoch recorded a finite value" in psnr.inner_text() and psnr.locator("canvas").count() == 0
    page.assert_offline_and_clean()


def grids_link(run: Path):
    (run / "grids").rename(run.parent / "elsewhere")
    (run / "grids").symlink_to(run.parent / "elsewhere")


@pytest.mark.parametrize("damage, words", [
    (lambda run: (run / "eval.json").write_text('{"bce": 0.3,'), ["eval.json", "damaged", "aelab eval"]),
    (lambda run: (run / "eval.json").write_text("[1, 2]"), ["eval.json", "damaged", "aelab eval"]),
    (lambda run: (run / "grids" / "epoch_002.png").write_bytes(b"not a png"), ["epoch_002.png", "not a readable"]),
    (lambda run: (run / "grids" / "epoch_002.png").write_bytes(png_header(15000, 15000)), ["epoch_002.png"]),
    (grids_link, ["grids is a symbolic link"]),
], ids=["eval-json-cut", "eval-json-list", "grid-not-png", "grid-bomb", "grids-link"])
def test_damaged_page_inputs_are_refused_in_one_line(damaged, damage, words, capsys):
    damage(damaged)
    assert_user_error(in_process(["report", damaged], capsys), *words)


def test_a_diverged_run_builds_its_page_without_warnings(subset_npz, tmp_path, capsys):
    # through cli.main: in_process shows the warnings a fresh process would print on stderr
    result = in_process(["train", "--data", subset_npz, "--epochs", 1, "--lr", 30, "--seed", 0, "--threads", 1,
                         "--out", tmp_path / "run"], capsys)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Warning" not in result.stderr, result.stderr  # every code equal: no 0/0 in the map's variance shares
    assert page_data(tmp_path / "run" / "report.html")["map"]["n"] == 1000


SCORED, THRESHOLD = "#e8773a", "#d62728"  # page.js's colours for the scored inputs and the threshold


def test_after_aelab_score_the_page_draws_the_histogram_roc_pr_and_the_strangest(browser, trained_run, subset_npz,
                                                                                 tmp_path, capsys):
    run = shutil.copytree(trained_run, tmp_path / "run")
    result = in_process(["score", run, subset_npz, "--normal-class", 0, "--out", tmp_path / "s.csv"], capsys)
    assert result.returncode == 0, result.stderr
    data = page_data(run / "report.html")["anomaly"]
    page = Page(browser, run / "report.html")
    counts = "Array.from(document.querySelectorAll('#anomaly-charts .chart')).map(e => e.dataset.drawn)"
    for _ in range(50):
        drawn = page.js(counts)
        if None not in drawn:
            break
        page.page.wait_for_timeout(100)
    bars = sum(v > 0 for v in data["train"] + data["scored"])
    threshold_shown = data["edges"][0] <= data["threshold"] <= data["edges"][-1]
    # every bar with a share and the threshold line; the ROC and PR curves' points and the ROC's chance diagonal
    assert [int(d) for d in drawn] == [bars + threshold_shown, len(data["roc"]) + 2, len(data["pr"])]
    histogram = page.screenshot("#anomaly-histogram canvas")[8:-24, 44:-12]
    for colour in (TRAIN, SCORED) + ((THRESHOLD,) if threshold_shown else ()):
        assert colour_pixels(histogram, colour, 30) > 20, colour
    roc = page.screenshot("#anomaly-charts .chart:nth-child(2) canvas")[8:-24, 54:-12]
    assert colour_pixels(roc, SCORED, 30) > 100
    top = page.screenshot("#anomaly-top")
    assert top.std() > 10  # the strangest images, drawn
    lead = page.page.locator("section", has_text="Anomaly scores").inner_text()
    assert f"AUROC {data['measures']['auroc']:.4f}" in lead
    page.assert_offline_and_clean()
