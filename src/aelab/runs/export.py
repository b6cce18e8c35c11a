"""A trained model as two ONNX files, usable without torch (onnxruntime, or any ONNX runtime):

    encoder.onnx   images (batch, c, h, w) float32 in [0, 1] -> codes (batch, latent): the deterministic code
                   (a VAE's posterior mean), as model.encode gives it
    decoder.onnx   codes (batch, latent) -> images (batch, c, h, w): pixel probabilities, as model.decode

A model trained on vectors takes and gives vectors (batch, d) in their own units, as its encode and decode do.
Each file traces the model's public `encode` or `decode` (aelab.models.contract), so a new variant exports as it encodes
and decodes, with no code here that knows it. Exported with torch's TorchScript-based exporter (dynamo=False): it
needs no onnxscript, takes a fraction of a second per file (the torch.export-based one took 3 s here), and covers
these plain layer stacks.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from aelab.errors import UserError
from aelab.storage import files

OPSET = 17


class _Part(nn.Module):
    """One public method of a model (the contract's encode or decode) as a module to trace: whatever a variant
    overrides behind them (its code, its output step, a vector model's standardisation) is exported with them."""

    def __init__(self, model, method: str):
        super().__init__()
        self.model, self.method = model, method

    def forward(self, x):
        return getattr(self.model, self.method)(x)


def require_onnx():
    """onnx and onnxruntime, or one line naming the pip command."""
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise UserError("ONNX export needs the onnx and onnxruntime packages; install them with "
                        "`pip install 'aelab[onnx]'`") from None
    return onnx, onnxruntime


def export_onnx(model, out: str | Path) -> tuple[Path, Path]:
    """Write out/encoder.onnx and out/decoder.onnx for a model (eval mode), with a dynamic batch axis."""
    onnx, _ = require_onnx()
    out = Path(out)
    model = model.eval()
    paths = out / "encoder.onnx", out / "decoder.onnx"
    parts = ((_Part(model, "encode"), torch.zeros(2, *model.in_shape), "images", "codes"),
             (_Part(model, "decode"), torch.zeros(2, model.code_size), "codes", "images"))
    for path, (module, example, name_in, name_out) in zip(paths, parts):
        buffer = io.BytesIO()  # exported and checked in memory, then written whole by aelab's one writer
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter's, see the docstring
            # encode and decode check their input's shape, which the trace fixes but for the batch axis; as_tensor
            # of a float32 tensor is that tensor: max_differences measures the files against torch all the same
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(module, (example,), buffer, input_names=[name_in], output_names=[name_out],
                              dynamic_axes={name_in: {0: "batch"}, name_out: {0: "batch"}}, opset_version=OPSET,
                              dynamo=False)
        onnx.checker.check_model(onnx.load_from_string(buffer.getvalue()))
        files.write_bytes(path, buffer.getvalue())
    return paths


@torch.no_grad()
def max_differences(model, folder: str | Path, images: torch.Tensor) -> dict[str, float]:
    """Largest absolute difference between onnxruntime and torch, for the codes and the decoded images of
    float images (n, c, h, w)."""
    _, ort = require_onnx()
    folder = Path(folder)
    encoder = ort.InferenceSession(str(folder / "encoder.onnx"), providers=["CPUExecutionProvider"])
    decoder = ort.InferenceSession(str(folder / "decoder.onnx"), providers=["CPUExecutionProvider"])
    codes = encoder.run(None, {"images": images.numpy()})[0]
    decoded = decoder.run(None, {"codes": codes})[0]
    model.eval()
    expected_codes = model.encode(images)
    return {"codes": float(np.abs(codes - expected_codes.numpy()).max()),
            "images": float(np.abs(decoded - model.decode(torch.from_numpy(codes)).numpy()).max())}
