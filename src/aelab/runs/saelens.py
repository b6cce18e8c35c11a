"""A trained `sae` run in SAELens's on-disk format (what `SAE.load_from_disk(DIR)` reads):

    DIR/cfg.json                  architecture, d_in, d_sae, dtype, device, apply_b_dec_to_input,
                                  normalize_activations, reshape_activations, metadata (+ k for topk)
    DIR/sae_weights.safetensors   W_enc (d_in, d_sae), b_enc (d_sae,), W_dec (d_sae, d_in), b_dec (d_in,)
                                  (+ threshold (d_sae,) for jumprelu)

SAELens encodes z = act((x - b_dec) @ W_enc + b_enc) and decodes z @ W_dec + b_dec, on raw activations. Its
"jumprelu" act is relu(pre) * (pre > threshold): aelab's JumpReLU with its learned threshold, and aelab's
BatchTopK at inference, whose per-input rule keeps pre > its running threshold (clamped at 0) over the unit's atom
norm. SAELens itself saves a trained BatchTopK SAE for inference as a JumpReLU from its batch threshold. aelab trains
on activations standardised per feature, s = (x - mean) / std, so the standardisation is folded into the weights:
(s - b) = (x - (mean + std * b)) / std gives W_enc / std[:, None] and b_dec = mean + std * b, and the decoder's
std * (W z + b) + mean gives W_dec * std. SAELens then gives the same codes and reconstructions as aelab's encode
and reconstruct, on the same raw activations.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from aelab.errors import UserError
from aelab.storage import files, tensorfile

# aelab's sparsity -> SAELens's inference architecture
ARCHITECTURES = {"topk": "topk", "batchtopk": "jumprelu", "jumprelu": "jumprelu", "l1": "standard"}
FILES = ("cfg.json", "sae_weights.safetensors")


def saelens_tensors(model) -> dict[str, torch.Tensor]:
    """W_enc, b_enc, W_dec, b_dec (and threshold) in SAELens's layout and raw units, float32 on the CPU."""
    encoder, decoder = model.encoder[-1], model.decoder[0]
    mean, std = model.in_mean.double().cpu(), model.in_std.double().cpu()
    w_enc = encoder.weight.detach().double().cpu().T                     # (d_in, d_sae)
    w_dec = decoder.weight.detach().double().cpu().T                     # (d_sae, d_in)
    b = decoder.bias.detach().double().cpu()
    tensors = {"W_enc": w_enc / std[:, None], "b_enc": encoder.bias.detach().double().cpu(),
               "W_dec": w_dec * std[None, :], "b_dec": mean + std * b}
    # the threshold compares pre-activations, which the fold leaves in aelab's units: no rescaling
    thresholds = model.unit_thresholds()  # jumprelu's learned ones; batchtopk's running one over each atom's norm
    if thresholds is not None:
        tensors["threshold"] = thresholds.double().cpu()
    return {k: v.float().contiguous() for k, v in tensors.items()}


def saelens_config(model, metadata: dict | None = None) -> dict:
    config = model.config
    cfg = {"architecture": ARCHITECTURES[config.sparsity], "d_in": int(config.in_shape[0]), "d_sae": config.latent,
           "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True, "normalize_activations": "none",
           "reshape_activations": "none", "metadata": metadata or {}}
    if config.sparsity == "topk":
        cfg.update(k=min(config.k, config.latent), rescale_acts_by_decoder_norm=False)
    return cfg


def check_exportable(model, name: str) -> None:
    """Refuse, in one line, a run SAELens cannot represent."""
    config = model.config
    if name != "sae":
        raise UserError(f"SAELens reads sparse autoencoders; this is a {name!r} run: export an `aelab train sae` run")
    if config.sparsity not in ARCHITECTURES:
        raise UserError(f"SAELens has no form of the sparsity {config.sparsity!r}; export a run trained with one of "
                        f"{', '.join(ARCHITECTURES)}")
    if config.recon_loss != "mse" or config.hidden or config.arch != "mlp":
        raise UserError("SAELens's SAEs are one linear layer each way on activation vectors; this run was trained "
                        "on images or with hidden layers: train the SAE on vectors with no --hidden")


def export_saelens(run: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Write a trained sae run's cfg.json and sae_weights.safetensors into `out`."""
    from aelab.runs.runfolder import RunFolder, load_model

    out = Path(out)
    taken = [name for name in FILES if (out / name).exists()]
    if taken and not overwrite:
        raise UserError(f"{out} already holds {' and '.join(taken)}; choose another --out or pass --overwrite")
    config = RunFolder.open(run).config()
    model = load_model(run, "cpu")
    check_exportable(model, config.model_name)
    metadata = {"exported_by": "aelab", "aelab_run": str(Path(run).resolve()), "data": config.data.path}
    tensorfile.write(out / FILES[1], saelens_tensors(model), {"format": "pt"})
    files.write_text(out / FILES[0], json.dumps(saelens_config(model, metadata), indent=2) + "\n")
    return out
