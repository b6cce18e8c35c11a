"""The one contract every method keeps: the autoencoders of aelab.models and the baselines (PCA, logistic PCA).

The trainer, evaluation, comparison, reports and CLI use a method only through these members, never by its type
or by what attributes it happens to have.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import torch


@runtime_checkable
class Model(Protocol):
    """A method that encodes inputs to codes and reconstructs them."""

    generative: ClassVar[bool]
    """Whether it draws new inputs with `sample(n, generator)` (the VAE family, the AAE)."""

    denoising: ClassVar[bool]
    """Whether it was trained to restore corrupted inputs (the DAE): `aelab denoise` takes it."""

    pictures: ClassVar[dict[str, str]]
    """The pictures `make_pictures` draws: file name -> caption."""

    anomaly_kinds: ClassVar[tuple[str, ...]]
    """The anomaly scores `anomaly_scores` computes, its default first ("recon", "mahalanobis"; a VAE's "elbo")."""

    @property
    def title(self) -> str:
        """Its name for people: the class's ("VQVAE", "PCA")."""

    @property
    def about(self) -> str:
        """What it is, in its class's docstring."""

    @property
    def data_kind(self) -> str:
        """"images" (pixels in [0, 1]) or "vectors" (real values of any scale): what it was made for and takes."""

    @property
    def in_shape(self) -> tuple[int, ...]:
        """The shape of one input: (channels, height, width) for images, (d,) for vectors."""

    @property
    def code_shape(self) -> tuple[int, ...]:
        """One input's code as the decoder takes it: (width,), or a grid (width, h, w) of code vectors of that width
        (a VQ-VAE's); `encode` gives it flattened. Its width is what --latent sets."""

    @property
    def code_size(self) -> int:
        """How many numbers `encode` gives per input: the code flattened."""

    @property
    def device(self) -> torch.device:
        """Where it computes: tensors given to `evaluation`, `measures` and `make_pictures` live there."""

    @property
    def prior_name(self) -> str | None:
        """The prior `sample` draws codes from ("normal", "mixture", "uniform"); None if it does not sample."""

    def encode(self, x: Any) -> Any:
        """Codes (n, code_size) of inputs; numpy in, numpy out, torch in, torch out."""

    def decode(self, z: Any) -> Any:
        """Inputs from codes (n, code_size), of the same kind as z."""

    def reconstruct(self, x: Any) -> Any:
        """decode(encode(x)), in x's kind."""

    def sampling_codes(self, x: Any) -> torch.Tensor:
        """The continuous codes (n, d) of inputs, as a float tensor, to which a density is fitted to sample ex post
        (aelab.evaluation.samplers): the code `encode` gives, or a quantised model's code before quantisation."""

    def decode_sampled(self, z: torch.Tensor) -> torch.Tensor:
        """Outputs (images in [0, 1], or vectors in their units) from codes drawn in the space of `sampling_codes`:
        `decode`, or a quantised model's quantisation and decode."""

    def evaluation(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor | None]:
        """For a clean float batch: the eval-mode loss terms ("loss" first), the clean reconstruction as the model
        outputs it (probabilities for images, standardised vectors for vectors) and its logits (None for vectors,
        or a method without logits)."""

    def prepare(self, x: Any) -> torch.Tensor:
        """Inputs as `encode` takes them (uint8 or float images, vectors in their own units) as the clean float batch
        that `evaluation` and `anomaly_scores` take."""

    def anomaly_reference(self, batches: Any) -> dict[str, torch.Tensor]:
        """What `anomaly_scores` needs from the training data (an iterable of clean float batches), fitted once."""

    def anomaly_scores(self, x: torch.Tensor, kind: str, reference: dict[str, torch.Tensor] | None = None
                       ) -> torch.Tensor:
        """One score per input of a clean float batch, (b,): higher is less like the training data."""

    def anomaly_details(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The reconstruction of a clean float batch and its per-pixel error, each shaped like x (for pictures)."""

    def measures(self, test: Any) -> dict:
        """Measures of this method beyond reconstruction, on a test set on its device."""

    def make_pictures(self, test: Any) -> dict[str, np.ndarray]:
        """The pictures named in `pictures`, drawn from a test set on its device: file name -> uint8 array."""

    def decoder_layers(self) -> torch.nn.Sequential | None:
        """The layers that take a code (shaped `code_shape`) to the decoder's output (logits for images), in order,
        for a reader that runs them elsewhere (the report page); None for a method without them (the baselines)."""

    def sampling_words(self) -> tuple[str, str | None]:
        """In words, for a sampler's description: what `sampling_codes` gives ("the codes `encode` gives" where it is
        the plain one) and what `decode_sampled` does to a draw (None where it is `decode`), each a phrase."""

    def older_layout(self, like: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor] | None:
        """The tensors a saved state of an older layout holds, given this model's (`like`, named after `prefix`), or
        None where there is none: a weights file of either layout loads."""

    def num_parameters(self) -> int:
        """How many learned numbers it holds."""

    def eval(self) -> Model:
        """Itself, set to evaluate (no dropout, no noise)."""


class Defaults:
    """What the contract answers alike for every method unless it says otherwise: its title and words from its class
    (how it samples ex post: the first line of the docstring of a `sampling_codes` or `decode_sampled` it
    overrides; a base whose own sampling_codes and decode_sampled are its encode and decode sets plain_sampling),
    no older saved layout and no decoder layers."""

    @property
    def title(self) -> str:
        return type(self).__name__

    @property
    def about(self) -> str:
        return (type(self).__doc__ or "").strip()

    def sampling_words(self) -> tuple[str, str | None]:
        def phrase(name: str, plain: str | None) -> str | None:
            method = getattr(type(self), name)
            if any(vars(c).get("plain_sampling") and method is vars(c).get(name) for c in type(self).__mro__):
                return plain
            line = " ".join((method.__doc__ or method.__name__).strip().split("\n\n")[0].split()).rstrip(".")
            return line[:1].lower() + line[1:]  # "The encoder's output." -> "the encoder's output"

        return phrase("sampling_codes", "the codes `encode` gives"), phrase("decode_sampled", None)

    def older_layout(self, like: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor] | None:
        return None

    def decoder_layers(self) -> torch.nn.Sequential | None:
        return None


def same_kind(like, result: torch.Tensor):
    """`result` as the kind of `like`: a tensor on like's device, or a numpy array for anything else."""
    return result.to(like.device) if isinstance(like, torch.Tensor) else result.cpu().numpy()


def register_in(table: dict[str, type], name: str, cls: type, base: type, noun: str, base_name: str,
                reserved: frozenset[str] = frozenset(), why_reserved: str = "") -> type:
    """Enter `cls` in a registry `table` under `name` (a model, a sparsity): a word, a subclass of `base` (known to
    users as `base_name`), a name not taken by another class (the same class again is harmless: a plugin imported
    twice), and none of `reserved` (refused with `why_reserved`, which may name {name!r})."""
    from aelab.errors import UserError

    if not isinstance(name, str) or not name.isidentifier():
        raise UserError(f"a {noun}'s name is a word of letters, digits and underscores, not {name!r}")
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise UserError(f"register {name!r} with a subclass of {base_name}, not {cls!r}")
    if name in reserved:
        raise UserError(why_reserved.format(name=name))
    if table.get(name, cls) is not cls:
        raise UserError(f"the {noun} name {name!r} is taken by {table[name].__name__}; register yours under another")
    table[name] = cls
    return cls
