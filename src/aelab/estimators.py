"""aelab's models and baselines as scikit-learn transformers.

    from aelab.estimators import Autoencoder, LogisticPCA, PCA

    ae = Autoencoder(model="vae", settings={"latent": 30}, epochs=20).fit(X)  # X: rows or images (n, h, w[, c])
    codes = ae.transform(X)                 # (n, 30) float32: the codes (a VAE's posterior mean)
    images = ae.inverse_transform(codes)    # float32 in [0, 1], laid out as the X given to fit
    ae.score(X)                             # minus the squared error per image: higher is better
    ae.predict(X)                           # +1 inlier, -1 outlier (contamination=0.01 of the training images)

X holds pixels: uint8 (0-255) or floats in [0, 1], numpy, torch or anything array-like. Rows that are not images
of a known shape are read as square grey images (or square colour ones, h*w*3), else as one row of pixels; pass
`image_shape` for others. Training runs aelab's one Trainer in memory: no run folder, no files.

Fitted estimators save to one safetensors file (`save`, `load`): the weights as tensors, parameters and fitted
attributes as JSON in its metadata. Pickling (joblib too) stores those same bytes, never a torch pickle.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
try:
    from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, OutlierMixin, TransformerMixin
    from sklearn.utils.validation import check_array, check_is_fitted, validate_data
except ImportError:
    raise ImportError("aelab.estimators needs scikit-learn 1.6 or later; install it with "
                      "`pip install 'aelab[sklearn]'`") from None

from aelab.config import RunConfig
from aelab.data.datasets import ImageSet
from aelab.errors import UserError
from aelab.evaluation import anomaly, baselines
from aelab.evaluation.evaluate import reconstruction_metrics
from aelab.experiments.pipeline import build_for
from aelab.flags import ESTIMATOR_PARAMETERS, FLAGS
from aelab.models import build
from aelab.runs.settings import from_dict, resolve
from aelab.storage import files, tensorfile
from aelab.training.train import Trainer

FORMAT = "aelab-estimator/1"
BATCH = 2500  # images per forward pass in transform, inverse_transform and score
FIX = "save it again with est.save(path)"  # what to do about a damaged saved estimator


# -- one image's layout: as the user holds it, and as the models take it (c, h, w) ------------------------------

def _layout(sample_shape: tuple[int, ...], image_shape=None) -> tuple[int, ...]:
    """One image as the user lays it out: (h, w), (h, w, c) or (c, h, w)."""
    if len(sample_shape) > 1:
        if len(sample_shape) > 3:
            raise ValueError(f"images of shape {sample_shape} have too many axes; give (n, h, w) or (n, h, w, c)")
        return tuple(sample_shape)
    (d,) = sample_shape
    if image_shape is not None:
        if not 2 <= len(image_shape) <= 3 or math.prod(image_shape) != d:
            raise ValueError(f"image_shape {tuple(image_shape)} does not hold the {d} values of a row; "
                             "give (h, w) or (h, w, c) with h*w*c equal to the row length")
        return tuple(image_shape)
    side = math.isqrt(d)
    if side * side == d:
        return side, side
    side = math.isqrt(d // 3)
    if 3 * side * side == d:
        return side, side, 3
    return 1, d  # no square image: one row of pixels (which an MLP does not mind)


def _channels_first(layout: tuple[int, ...]) -> bool:
    return len(layout) == 3 and layout[0] in (1, 3, 4) and layout[-1] not in (1, 3, 4)


def _model_shape(layout: tuple[int, ...]) -> tuple[int, int, int]:
    if len(layout) == 2:
        return 1, *layout
    return layout if _channels_first(layout) else (layout[2], layout[0], layout[1])


def _tuples(value):
    """A parameter read back from JSON, which turned its tuples (in a settings dict too) into lists."""
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return tuple(map(_tuples, value)) if isinstance(value, list) else value


def _flat(config: dict) -> dict:
    """A RunConfig's dict as {"section.key": value}."""
    return {"model_name": config["model_name"],
            **{f"{s}.{k}": v for s, section in config.items() if isinstance(section, dict) for k, v in section.items()}}


class _ImageTransformer(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """What every estimator here shares: input checks and layouts, batched transforms, score, save and load.
    Subclasses fit `model_` in `_fit` and say how it encodes, decodes and saves."""

    _bernoulli = True  # pixels are Bernoulli means: floats outside [0, 1] get a warning

    def _images(self, X, reset: bool) -> torch.Tensor:
        """X as model images (n, c, h, w): uint8, or float32 in [0, 1]."""
        if isinstance(X, torch.Tensor):
            X = X.detach().cpu().numpy()
        shape = tuple(X.shape) if getattr(X, "ndim", 0) > 2 else ()
        if shape:  # images: flattened, so that sklearn sees (and checks) one row per image
            X = np.asarray(X).reshape(shape[0], math.prod(shape[1:]))
        rows = validate_data(self, X, reset=reset)
        if reset:
            self.input_shape_ = shape[1:] or (rows.shape[1],)
            self.layout_ = _layout(self.input_shape_, getattr(self, "image_shape", None))
            self.image_shape_ = _model_shape(self.layout_)
        if rows.dtype != np.uint8:
            rows = rows.astype(np.float32)
            if self._bernoulli and rows.size and (rows.min() < 0 or rows.max() > 1):
                # a warning, not an error: scikit-learn's contract is any finite numbers in, and they do train
                warnings.warn(f"X holds values from {rows.min():g} to {rows.max():g}; {type(self).__name__} reads "
                              "floats as pixel intensities in [0, 1] (its loss is a Bernoulli cross-entropy): "
                              "divide 0-255 floats by 255, or pass uint8 images", UserWarning, stacklevel=3)
        rows = np.ascontiguousarray(rows)
        if not rows.flags.writeable:  # torch wants arrays it may write to (a read-only memmap is copied)
            rows = rows.copy()
        images = torch.from_numpy(rows).reshape(len(rows), *self.layout_)
        if len(self.layout_) == 2:
            return images.unsqueeze(1)
        return images if _channels_first(self.layout_) else images.permute(0, 3, 1, 2).contiguous()

    def _as_input(self, images: torch.Tensor) -> np.ndarray:
        """Model images (n, c, h, w) in the layout of the X given to fit."""
        if len(self.layout_) == 2:
            images = images[:, 0]
        elif not _channels_first(self.layout_):
            images = images.permute(0, 2, 3, 1)
        return images.reshape(len(images), *self.input_shape_).numpy()

    def fit(self, X, y=None):
        """Learn codes of the images X; y is ignored (for pipelines)."""
        self._fit(self._images(X, reset=True))
        return self

    @torch.no_grad()
    def transform(self, X) -> np.ndarray:
        """Codes (n, n_codes) float32 of the images X."""
        check_is_fitted(self)
        images = ImageSet(self._images(X, reset=False))
        return torch.cat([self._encode(x) for x in images.batches(BATCH)]).numpy()

    @torch.no_grad()
    def inverse_transform(self, X) -> np.ndarray:
        """Images (float32 in [0, 1] for the autoencoders and logistic PCA) decoded from codes X (n, n_codes)."""
        check_is_fitted(self)
        codes = check_array(X, dtype=np.float32)
        if codes.shape[1] != self._n_features_out:
            raise ValueError(f"codes must have {self._n_features_out} columns, not {codes.shape[1]}")
        codes = torch.from_numpy(codes)
        return self._as_input(torch.cat([self._decode(codes[i:i + BATCH]) for i in range(0, len(codes), BATCH)]))

    def score(self, X, y=None) -> float:
        """Minus the squared error per image (summed over its pixels in [0, 1], averaged over images) of the
        reconstructions of X: higher is better, as scikit-learn's model selection expects."""
        check_is_fitted(self)
        return -reconstruction_metrics(self.model_, ImageSet(self._images(X, reset=False)), BATCH)["sse_per_image"]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]  # codes are float32, whatever came in
        return tags

    # -- save and load: one safetensors blob, for files and pickles alike ----------------------------------------

    def to_bytes(self) -> bytes:
        """The fitted estimator as safetensors bytes: tensors, with parameters and fitted attributes as JSON."""
        check_is_fitted(self)
        fitted = {"n_features_in_": self.n_features_in_, "input_shape_": self.input_shape_, "layout_": self.layout_,
                  "image_shape_": self.image_shape_, **self._fitted_meta()}
        if hasattr(self, "feature_names_in_"):
            fitted["feature_names_in_"] = self.feature_names_in_.tolist()
        meta = {"format": FORMAT, "class": type(self).__name__, "params": json.dumps(self.get_params()),
                "fitted": json.dumps(fitted)}
        return tensorfile.to_bytes(self._tensors(), meta)

    def _load_bytes(self, data: bytes, source: str = "the pickled estimator") -> None:
        meta = tensorfile.metadata(data, source, FIX)
        if meta.get("class") != type(self).__name__:
            raise UserError(f"{source} holds a {meta.get('class')}, not a {type(self).__name__}")
        try:
            self.__dict__.update({k: _tuples(v) for k, v in json.loads(meta["params"]).items()})
            fitted = json.loads(meta["fitted"])
            for key in ("n_features_in_", "input_shape_", "layout_", "image_shape_"):
                setattr(self, key, _tuples(fitted.pop(key)))
            if "feature_names_in_" in fitted:
                self.feature_names_in_ = np.asarray(fitted.pop("feature_names_in_"), dtype=object)
            self._restore(lambda like: tensorfile.load(data, like, source=source, fix=FIX)[0], fitted, source)
        except UserError:
            raise
        except (*tensorfile.ERRORS, RecursionError) as e:  # JSON errors are ValueErrors
            raise UserError(f"{source} holds a {type(self).__name__} that cannot be rebuilt ({e.__class__.__name__}: "
                            f"{str(e)[:200]}); it is damaged: {FIX}") from None

    def save(self, path: str | Path) -> Path:
        """Write the fitted estimator to a safetensors file (no pickle); read it back with `load`."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        files.write_bytes(path, self.to_bytes())
        return path

    @classmethod
    def load(cls, path: str | Path):
        """An estimator written by `save`."""
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise UserError(f"{path} cannot be read ({e}); check the path and its permissions") from None
        meta = tensorfile.metadata(data, str(path), FIX)
        target = ESTIMATORS.get(meta.get("class"))
        if meta.get("format") != FORMAT or target is None or not issubclass(target, cls):
            raise UserError(f"{path} holds no saved aelab {cls.__name__}; write one with est.save(path)")
        estimator = target.__new__(target)
        estimator._load_bytes(data, str(path))
        return estimator

    def __getstate__(self):
        """Pickles of a fitted estimator hold its safetensors bytes: weights as tensors, the rest as JSON."""
        state = super().__getstate__()
        if not hasattr(self, "model_"):
            return state
        return {"_sklearn_version": state.get("_sklearn_version"), "aelab_safetensors": self.to_bytes()}

    def __setstate__(self, state):
        data = state.pop("aelab_safetensors", None)
        super().__setstate__(state)
        if data is not None:
            self._load_bytes(data)

    # -- what each estimator fills in ------------------------------------------------------------------------

    def _fit(self, images: torch.Tensor) -> None: ...
    def _encode(self, x: torch.Tensor) -> torch.Tensor: ...
    def _decode(self, z: torch.Tensor) -> torch.Tensor: ...
    def _tensors(self) -> dict[str, torch.Tensor]: ...
    def _fitted_meta(self) -> dict: return {}
    def _restore(self, read, fitted: dict, source: str) -> None:
        """Rebuild the fitted state; read(like) gives the saved tensors, checked against `like` (tensorfile.load)."""


# -- the autoencoders -------------------------------------------------------------------------------------------

class Autoencoder(OutlierMixin, _ImageTransformer):
    """Any registered aelab model (`aelab models`) as a transformer, trained by aelab's Trainer in memory.
    transform gives the deterministic code (a VAE's posterior mean), inverse_transform the decoder's pixel
    probabilities.

    It is also an outlier detector, as scikit-learn's are: score_samples (higher is more normal: minus the model's
    anomaly score, `anomaly_score` naming which, None for its default), decision_function (score_samples less
    offset_, negative for outliers), predict (+1 inlier, -1 outlier), fit_predict. offset_ puts the share
    `contamination` of the training images below zero.

    `settings` holds the model's own settings, the fields of its Config (aelab.models.MODELS[model].Config), e.g.
    {"latent": 30, "hidden": (128, 64), "beta": 2.0} for a VAE; they are checked as `aelab train --set` checks
    them, so a model refuses a setting it has not. Training settings left at None take aelab's defaults: 100
    epochs, batch_size 512, lr 1e-3, seed 0, precision "fp32". `image_shape` (h, w) or (h, w, c) says how rows are
    images (needed by arch="conv" for rows that are not square images).

    Fitted: model_ (the torch module, eval mode, CPU), config_ (aelab's RunConfig), history_ (the training loss
    terms of every epoch), n_features_in_, image_shape_ (c, h, w), offset_, reference_ (what the score needs
    from the training images: the mean and precision of their codes)."""

    def __init__(self, model: str = "ae", *, settings=None, epochs=None, batch_size=None, lr=None, seed=None,
                 device: str = "auto", precision=None, image_shape=None, contamination: float = 0.01,
                 anomaly_score=None):
        self.model, self.settings = model, settings
        self.epochs, self.batch_size, self.lr, self.seed = epochs, batch_size, lr, seed
        self.device, self.precision, self.image_shape = device, precision, image_shape
        self.contamination, self.anomaly_score = contamination, anomaly_score

    def run_config(self) -> RunConfig:
        """The aelab configuration these parameters make (what `aelab train` would run)."""
        if not isinstance(self.model, str):
            raise UserError(f"model is a registered model's name (see `aelab models`), e.g. 'ae', not {self.model!r}")
        if self.settings is not None and not isinstance(self.settings, Mapping):
            raise UserError(f"settings is a dict of the model's settings, e.g. {{'latent': 30}}, not "
                            f"{type(self.settings).__name__}")
        overrides = {f"model.{key}": value for key, value in (self.settings or {}).items()}
        overrides.update({FLAGS[name]: getattr(self, name) for name in ESTIMATOR_PARAMETERS
                          if getattr(self, name) is not None})  # the training ones, as `aelab train`'s flags
        overrides["train.train_eval_size"] = 0  # fit reports its training loss; no second pass over the images
        return resolve(self.model, None, overrides)

    def _fit(self, images: torch.Tensor) -> None:
        config = self.run_config()
        anomaly.check_contamination(self.contamination)  # before training: a bad value costs nothing
        with torch.random.fork_rng(devices=[]):  # seeded like `aelab train`, the caller's RNG left as it was
            torch.manual_seed(config.train.seed)
            model = build_for(config, ImageSet(images))
            anomaly.kind_of(model, self.anomaly_score)
            trainer = Trainer(model, ImageSet(images), ImageSet(images[:0]), config.train)
            self.history_ = trainer.fit()
        self.model_, self.config_ = model.cpu().eval(), config
        self.reference_, train_scores = anomaly.fit(self.model_, ImageSet(images), self._kind)
        self.offset_ = float(np.percentile(-train_scores, 100 * self.contamination))

    @property
    def _kind(self) -> str:
        return anomaly.kind_of(self.model_, self.anomaly_score)

    def score_samples(self, X) -> np.ndarray:
        """Minus the model's anomaly score of each image (n,): higher is more normal."""
        check_is_fitted(self)
        return -anomaly.scores(self.model_, ImageSet(self._images(X, reset=False)), self._kind, self.reference_)

    def decision_function(self, X) -> np.ndarray:
        """score_samples less offset_: negative for outliers."""
        return self.score_samples(X) - self.offset_

    def predict(self, X) -> np.ndarray:
        """+1 for inliers, -1 for outliers."""
        return np.where(self.decision_function(X) < 0, -1, 1)

    @property
    def _n_features_out(self) -> int:
        return self.model_.code_size  # a VQ-VAE codes a grid of vectors

    def _encode(self, x):
        return self.model_.encode(x)

    def _decode(self, z):
        return self.model_.decode(z)

    def _tensors(self):
        return {**self.model_.state_dict(), **{f"anomaly.{k}": v for k, v in self.reference_.items()}}

    def _fitted_meta(self):
        return {"config": self.config_.to_dict(), "history": self.history_, "offset_": self.offset_,
                "reference": {k: list(v.shape) for k, v in self.reference_.items()}}

    def _restore(self, read, fitted, source):
        self.config_ = from_dict(fitted["config"])
        self.history_, self.offset_ = fitted["history"], float(fitted["offset_"])
        try:
            expected = self.run_config()
        except UserError as e:
            raise UserError(f"{source} holds parameters aelab refuses ({e}); it is damaged: {FIX}") from None
        # what the data set (the input's shape, its loss) is not a parameter
        expected.model.in_shape, expected.model.recon_loss = self.config_.model.in_shape, self.config_.model.recon_loss
        saved, wanted = _flat(self.config_.to_dict()), _flat(expected.to_dict())
        changed = [key for key in wanted if wanted[key] != saved.get(key)]
        if changed:
            raise UserError(f"{source} holds parameters its model was not trained with ({', '.join(changed)}); "
                            f"it is damaged: {FIX}")
        self.model_ = build(self.config_.model_name, self.config_.model)
        like = {**self.model_.state_dict(),
                **{f"anomaly.{k}": torch.empty(shape) for k, shape in fitted["reference"].items()}}
        tensors = read(like)
        self.reference_ = {k.removeprefix("anomaly."): v for k, v in tensors.items() if k.startswith("anomaly.")}
        self.model_.load_state_dict({k: v for k, v in tensors.items() if not k.startswith("anomaly.")})
        self.model_.eval()


# -- the linear baselines ---------------------------------------------------------------------------------------

class _BaselineTransformer(_ImageTransformer):
    """A baseline of evaluation/baselines.py as a scikit-learn transformer, declared with
    `class PCA(_BaselineTransformer, baseline=baselines.PCA)`: its constructor (so its parameters and their defaults)
    and docstring are the baseline's own; fitted, model_ is the baseline, whose fitted tensors read here as numpy
    arrays (a scalar as a number)."""

    _baseline: type[baselines._Baseline]

    def __init_subclass__(cls, baseline: type[baselines._Baseline] | None = None, **kwargs):
        super().__init_subclass__(**kwargs)
        if baseline is None:
            return
        cls._baseline, cls.__init__ = baseline, baseline.__init__
        cls.__doc__ = cls.__doc__ or baseline.__doc__
        for name in baseline._state:
            setattr(cls, name, property(lambda self, name=name: _numpy(getattr(self.model_, name))))

    def _fit(self, images):
        self.model_ = self._baseline(**self.get_params()).fit(images)

    @property
    def _n_features_out(self) -> int:
        return self.n_components

    def _encode(self, x):
        return self.model_.encode(x)

    def _decode(self, z):
        return self.model_.decode(z)

    def _tensors(self):
        return {name: getattr(self.model_, name) for name in self._baseline._state}

    def _restore(self, read, fitted, source):
        self.model_ = self._baseline(**self.get_params())
        self.model_.image_shape_ = self.image_shape_
        for name, value in read(dict.fromkeys(self._baseline._state)).items():
            setattr(self.model_, name, value)


def _numpy(tensor: torch.Tensor):
    return tensor.numpy() if tensor.ndim else tensor.item()


class PCA(_BaselineTransformer, baseline=baselines.PCA):
    _bernoulli = False  # a least-squares method: any range will do


class LogisticPCA(_BaselineTransformer, baseline=baselines.LogisticPCA):
    loss_curve_ = property(lambda self: self.model_.loss_curve_)
    n_iter_ = property(lambda self: len(self.model_.loss_curve_), doc="evaluations of the loss and its gradient")
    m_scores_ = property(lambda self: getattr(self.model_, "m_scores_", None))

    def _fitted_meta(self):
        scores = getattr(self.model_, "m_scores_", None)
        return {"loss_curve_": self.model_.loss_curve_, "m_scores_": scores and list(scores.items())}

    def _restore(self, read, fitted, source):
        super()._restore(read, fitted, source)
        self.model_.loss_curve_ = fitted["loss_curve_"]
        if fitted["m_scores_"]:
            self.model_.m_scores_ = dict(fitted["m_scores_"])


ESTIMATORS = {cls.__name__: cls for cls in (Autoencoder, PCA, LogisticPCA)}
