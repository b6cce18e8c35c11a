"""Every folder aelab writes has an owner that declares its files: a run folder (storage.runfolder.RunFolder), a
comparison (CompareFolder), a sweep (SweepFolder) and the files `aelab activations` writes (ActivationFiles).

An owner writes only the paths it declares, never through a link (the folder itself, or any declared path, being a
symbolic link is refused in one line), replaces none of its files that are already there without --overwrite, and
with --overwrite deletes only its declared files, and only where its marker says aelab made them. A job stopped
part way (its marker says it is unfinished) is continued by the same command, which rewrites what it had begun.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from aelab.errors import UserError
from aelab.storage import files


class Entry:
    """A declared file or folder, as a class attribute: on an owner, its path there."""

    def __init__(self, name: str):
        self.name = name

    def __get__(self, owner, cls=None):
        return self if owner is None else owner.path / self.name


def entries(*names: str) -> tuple[Entry, ...]:
    return tuple(map(Entry, names))


class Owned:
    """What one kind of aelab job writes in a folder: its Entry attributes, what `declared` adds, and a marker."""

    kind = "folder"         # what messages call it
    marker_path: Entry      # made with the job's first file: --overwrite deletes only where it is

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def folder(self) -> Path:
        return self.path

    @classmethod
    def declared_names(cls) -> set[str]:
        return {e.name for c in cls.__mro__ for e in vars(c).values() if isinstance(e, Entry)}

    def declared(self) -> list[Path]:
        """Every path this owner may write (those named after the job, e.g. figures of each code size, included)."""
        return [self.path / name for name in sorted(self.declared_names())]

    def outputs(self) -> list[Path]:
        """The declared paths a new job writes afresh (not the marker, nor what it reuses)."""
        return [p for p in self.declared() if p != self.marker_path]

    def refuse_links(self) -> None:
        files.refuse_link(self.folder)
        for path in self.declared():
            if path.is_symlink():
                raise UserError(f"{path} is a symbolic link; aelab never writes through links nor replaces them: "
                                "remove the link, or pick another --out")

    def job(self) -> dict | None:
        """What the marker says of the job that wrote here ({"job": ..., "finished": ...}); None without one."""
        try:
            said = json.loads(self.marker_path.read_text())
        except (OSError, ValueError, RecursionError):
            return None if not self.marker_path.exists() else {}
        return said if isinstance(said, dict) else {}

    def claim(self, overwrite: bool, job=None) -> list[Path]:
        """Refuse, before anything is written, what this job may not do here: write through a link, into a file,
        over files already there without --overwrite (unless they are this same job's, stopped part way), or delete
        files with --overwrite where aelab's marker is not. Returns the files --overwrite will delete."""
        self.refuse_links()
        if self.folder.exists() and not self.folder.is_dir():
            raise UserError(f"{self.folder} is a file, and --out takes a folder; pick another --out")
        taken = [p for p in self.outputs() if p.exists()]
        if not taken:
            return []
        said = self.job()
        if said is not None and said.get("finished") is False and said.get("job") == json.loads(json.dumps(job)):
            return []  # the same job, stopped: it rewrites its files
        names = ", ".join(p.name for p in taken[:4]) + (f" and {len(taken) - 4} more" if len(taken) > 4 else "")
        if not overwrite:
            raise UserError(f"{self.folder} already holds {names}; pick another --out or pass --overwrite")
        if said is None:
            raise UserError(f"{self.folder} holds {names} but no {self.marker_path.name} (aelab did not make it as a "
                            f"{self.kind}), so --overwrite will not replace them; pick another --out")
        return taken

    def begin(self, overwrite: bool, job=None) -> None:
        """claim(), then delete what --overwrite replaces, make the folder and mark the job as begun."""
        for path in self.claim(overwrite, job):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise files.write_error(e, self.folder) from None
        files.sweep(self.folder)  # temporary files a killed job left
        self.mark(job, finished=False)

    def mark(self, job=None, finished: bool = True) -> None:
        files.write_text(self.marker_path, json.dumps({"made_by": "aelab", "kind": self.kind, "job": job,
                                                       "finished": finished}) + "\n")


class CompareFolder(Owned):
    """`aelab compare --out`: figures, tables and page at the top, the runs and baselines they came from in runs/.

        OUT/runs/NAME-kK/            a trained model's run folder (reused, or resumed to more epochs, next time)
        OUT/runs/NAME-kK.safetensors a fitted baseline (reused next time)
        OUT/reconstructions_kK.png   real test images, then one labelled row of reconstructions per method
        OUT/samples_NAME-kK-SAMPLER.png  100 samples of a method by one sampler (prior, gmm), 10 a row
        OUT/compare.md|csv|json      the table: errors, size, training time, code quality, sample quality
        OUT/error_vs_latent.png      with several code sizes: test error against code size
        OUT/report.html              all of it as one page, the table sortable (`aelab report OUT` rebuilds it)
    """

    kind = "comparison folder"
    md_path, csv_path, json_path = entries("compare.md", "compare.csv", "compare.json")
    error_plot_path, page_path, runs_path, marker_path = entries("error_vs_latent.png", "report.html", "runs",
                                                                 ".aelab-compare")
    FIGURE = re.compile(r"reconstructions_k(\d+)\.png")
    SAMPLES = re.compile(r"samples_\w+-k\d+-\w+\.png")

    def figure(self, latent: int) -> Path:
        return self.path / f"reconstructions_k{latent}.png"

    def figures(self) -> list[Path]:
        """The figures there, by code size."""
        found = [p for p in self.path.glob("reconstructions_k*.png") if self.FIGURE.fullmatch(p.name)]
        return sorted(found, key=self.figure_latent)

    @classmethod
    def figure_latent(cls, path: Path) -> int:
        return int(cls.FIGURE.fullmatch(path.name)[1])

    def run(self, name: str, latent: int) -> Path:
        return self.runs_path / f"{name}-k{latent}"

    def baseline(self, name: str, latent: int) -> Path:
        return self.runs_path / f"{name}-k{latent}.safetensors"

    def samples(self, method: str, latent: int, sampler: str) -> Path:
        return self.path / f"samples_{method}-k{latent}-{sampler}.png"

    def sample_grids(self) -> list[Path]:
        return sorted(p for p in self.path.glob("samples_*.png") if self.SAMPLES.fullmatch(p.name))

    def declared(self) -> list[Path]:
        return super().declared() + self.figures() + self.sample_grids()

    def outputs(self) -> list[Path]:
        return [p for p in super().outputs() if p != self.runs_path]  # finished runs are reused

    def tables(self) -> tuple[Path, Path, Path]:
        return self.md_path, self.csv_path, self.json_path


class SweepFolder(Owned):
    """`aelab sweep --out`: one run folder per combination of the grid (owned by RunFolder), and the leaderboard.

        OUT/RUN/                 each SAE's own run folder (named after its grid values, e.g. k16-latent256)
        OUT/sweep.md|csv|json    the leaderboard: FVU (images: BCE) against L0, dead units, training time
        OUT/fvu_vs_l0.png        the trade-off, one point per SAE (bce_vs_l0.png for images)
    """

    kind = "sweep folder"
    md_path, csv_path, json_path = entries("sweep.md", "sweep.csv", "sweep.json")
    fvu_plot_path, bce_plot_path, marker_path, lock_path = entries("fvu_vs_l0.png", "bce_vs_l0.png", ".aelab-sweep",
                                                                   ".aelab-lock")

    def plot_path(self, measure: str) -> Path:
        return {"fvu": self.fvu_plot_path, "bce": self.bce_plot_path}[measure]

    def outputs(self) -> list[Path]:
        return [p for p in super().outputs() if p != self.lock_path]

    def tables(self) -> tuple[Path, Path, Path]:
        return self.md_path, self.csv_path, self.json_path


class ActivationFiles(Owned):
    """`aelab activations --out ACTS.npy`: three files side by side in the user's folder; ACTS.json, written before
    the activations themselves, is the marker that says aelab wrote the set.

        ACTS.npy        (n, width) float32 or float16, written through a memory map one batch at a time
        ACTS.index.npy  (n,) int64: the row of each activation in its source data set's split
        ACTS.json       where they came from: the source run, its data and split, the layer
        ACTS.tokens.npy a transformer's activations only (`--hf`): each row's token id
    """

    kind = "set of activations"

    def __init__(self, path: str | Path):
        super().__init__(path)
        if self.path.suffix != ".npy":
            raise UserError(f"activations are written as a .npy file; give --out FILE.npy, not {self.path}")

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def index_path(self) -> Path:
        return self.path.with_suffix(".index.npy")

    @property
    def marker_path(self) -> Path:
        return self.path.with_suffix(".json")

    @property
    def tokens_path(self) -> Path:
        return self.path.with_suffix(".tokens.npy")

    def declared(self) -> list[Path]:
        return [self.path, self.index_path, self.marker_path, self.tokens_path]

    def outputs(self) -> list[Path]:
        return self.declared()

    def job(self) -> dict | None:
        """{} where ACTS.json describes activations (never "unfinished": a new set needs --overwrite), else None."""
        try:
            said = json.loads(self.marker_path.read_text())
        except (OSError, ValueError, RecursionError):
            return None
        return {} if isinstance(said, dict) and {"layer", "split", "rows"} <= said.keys() else None

    def mark(self, job=None, finished: bool = True) -> None:
        """Nothing: the description the writer puts in ACTS.json is the marker."""
