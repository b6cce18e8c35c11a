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

    @property
    def code_size(self) -> int:
        """How many numbers `encode` gives per input."""

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

    def measures(self, test: Any) -> dict:
        """Measures of this method beyond reconstruction, on a test set on its device."""

    def make_pictures(self, test: Any) -> dict[str, np.ndarray]:
        """The pictures named in `pictures`, drawn from a test set on its device: file name -> uint8 array."""

    def num_parameters(self) -> int:
        """How many learned numbers it holds."""

    def eval(self) -> Model:
        """Itself, set to evaluate (no dropout, no noise)."""


def same_kind(like, result: torch.Tensor):
    """`result` as the kind of `like`: a tensor on like's device, or a numpy array for anything else."""
    return result.to(like.device) if isinstance(like, torch.Tensor) else result.cpu().numpy()
