"""report.html in a real browser: Debian's Chromium driven by playwright, pages of real short runs opened from
file:// with every network request recorded. The decoder the page runs must agree with the model's to 1/255."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from aelab.cli import main
from conftest import RUN_EPOCHS

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

    def assert_offline_and_clean(self):
        assert self.requests == [self.path.as_uri()], self.requests  # the file itself, nothing else
        assert self.errors == [], self.errors


def tiny_run(tmp_path_factory, subset_npz, name: str, **settings) -> Path:
    """A one-epoch run on the subset, trained in this process by the machinery `aelab train` uses."""
    from aelab.config import resolve
    from aelab.pipeline import train

    out = tmp_path_factory.mktemp("runs") / name
    train(resolve(name, None, {"data.path": str(subset_npz), "train.epochs": 1, **settings}), out=out)
    return out


@pytest.fixture(scope="module")
def conv_run(tmp_path_factory, subset_npz, one_thread):
    return tiny_run(tmp_path_factory, subset_npz, "ae", **{"model.arch": "conv", "model.channels": "8,16",
                                                            "model.latent": 8, "train.grid_every": 0})


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory, subset_npz, one_thread):
    return tiny_run(tmp_path_factory, subset_npz, "vae", **{"model.latent": 2})


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
    from aelab.runfolder import load_model

    model = load_model(conv_run)
    page = Page(browser, conv_run / "report.html")
    assert page.js("document.getElementById('grid-recon')") is None  # --grid-every 0: no grids, no section
    for fx, fy in ((0.5, 0.5), (0.9, 0.2), (0.1, 0.8)):
        click_map(page, fx, fy)
        assert_decoded_like_the_model(page, model)
    page.assert_offline_and_clean()


def test_vae_page_strip_sliders_and_new_samples(browser, vae_run):
    from aelab.runfolder import load_model

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


def test_comparison_page_sorts_its_table(browser, subset_npz, tmp_path):
    out = tmp_path / "cmp"
    assert main(["compare", "pca", "--latents", "2,5", "--data", str(subset_npz), "--out", str(out)]) == 0
    page = Page(browser, out / "report.html")
    latents = "Array.from(document.querySelectorAll('#leaderboard tbody tr')).map(r => +r.children[1].textContent)"
    assert page.js(latents) == [2, 5]
    page.page.click("#leaderboard th[data-key=latent]")
    page.page.click("#leaderboard th[data-key=latent]")  # the second click sorts descending
    assert page.js(latents) == [5, 2]
    assert page.js("document.querySelectorAll('img').length") == 3  # figure 12.3 at 2 and 5, error against size
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
    from aelab.report_html import MAX_FRAMES, epoch_grids

    from aelab.runfolder import RunFolder

    grid, run = RunFolder(trained_run).grids()[0], RunFolder(tmp_path)
    run.grids_path.mkdir()
    for epoch in range(1, 151):
        shutil.copy(grid, run.grid(epoch))
    grids = epoch_grids(run.grids())
    assert len(grids["frames"]) == MAX_FRAMES and grids["epochs"][0] == 1 and grids["epochs"][-1] == 150
