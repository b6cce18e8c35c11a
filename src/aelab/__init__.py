"""aelab: an autoencoder laboratory.

The chapter's deep autoencoder, its variants and the PCA baselines, trained on real Fashion-MNIST.
Importing the package is cheap: torch is loaded by the submodules that need it, and the few calls below are
looked up on first use. The folders follow the work, each importing only those below it: files, devices and
pictures -> data -> models -> evaluation -> training -> runs -> reports -> experiments -> the CLI.

    >>> import aelab
    >>> model = aelab.load_model("runs/chapter")
    >>> codes = model.encode(images)            # numpy uint8/float or torch tensors
    >>> aelab.train(aelab.resolve("vae", None, {"epochs": 30}), out="runs/vae30")
"""

__version__ = "0.1.0"

_CALLS = {"resolve": "aelab.runs.settings", "load_dataset": "aelab.data.load", "train": "aelab.experiments.pipeline",
          "resume": "aelab.experiments.pipeline", "load_model": "aelab.runs.runfolder"}


def __getattr__(name: str):
    if name in _CALLS:
        import importlib

        return getattr(importlib.import_module(_CALLS[name]), name)
    raise AttributeError(f"module 'aelab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_CALLS])
