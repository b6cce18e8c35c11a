"""The names a user sets run settings by, one table each: the flags of `aelab train` (the scikit-learn estimator's
training parameters among them), and the settings a resumed run may change. Nothing but the tables and their one
check here: `aelab --help` reads them, and starts no faster than its imports."""

from __future__ import annotations

from aelab.errors import UserError

# flag (--batch-size for batch_size) or estimator parameter -> the setting it sets; --set KEY=VALUE reaches any other
FLAGS = {"epochs": "train.epochs", "latent": "model.latent", "batch_size": "train.batch_size", "lr": "train.lr",
         "seed": "train.seed", "data": "data.path", "arch": "model.arch", "hidden": "model.hidden",
         "precision": "train.precision", "grid_every": "train.grid_every", "device": "train.device"}
# the estimator's parameters among them: a model's own settings go in its `settings`, the data is X, no grids
ESTIMATOR_PARAMETERS = ("epochs", "batch_size", "lr", "seed", "precision", "device")

RESUMABLE = ("train.epochs", "train.lr", "train.precision", "train.device")  # what a resumed run may change


def flag_of(setting: str) -> str:
    """The flag that sets `setting` (train.batch_size: --batch-size)."""
    return "--" + next(name for name, key in FLAGS.items() if key == setting).replace("_", "-")


def resumable_flags() -> list[str]:
    return [flag_of(setting) for setting in RESUMABLE]


def check_resumable(changes, also=()) -> None:
    """One line if a resume is asked to change settings (keys `section.name`) outside RESUMABLE, or is given `also`
    (what else a caller was given that a resumed run keeps: a model name, a settings file)."""
    kept = [*sorted(set(changes) - set(RESUMABLE)), *also]
    if kept:
        *first, last = resumable_flags()
        raise UserError(f"a resumed run keeps its settings; drop {', '.join(kept)} "
                        f"(only {', '.join(first)} and {last} may change)")
