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

from aelab.errors import UserError
from aelab.storage import files, tensorfile

# aelab's sparsity -> SAELens's inference architecture
ARCHITECTURES = {"topk": "topk", "batchtopk": "jumprelu", "jumprelu": "jumprelu", "l1": "standard"}
FILES = ("cfg.json", "sae_weights.safetensors")


def saelens_config(settings, metadata: dict | None = None) -> dict:
    """cfg.json of an sae run's model settings."""
    cfg = {"architecture": ARCHITECTURES[settings.sparsity], "d_in": int(settings.in_shape[0]),
           "d_sae": settings.latent, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True,
           "normalize_activations": "none", "reshape_activations": "none", "metadata": metadata or {}}
    if settings.sparsity == "topk":
        cfg.update(k=min(settings.k, settings.latent), rescale_acts_by_decoder_norm=False)
    return cfg


def check_exportable(config, model) -> None:
    """Refuse, in one line, a run (its RunConfig and model) SAELens cannot represent."""
    settings = config.model
    if config.model_name != "sae":
        raise UserError(f"SAELens reads sparse autoencoders; this is a {config.model_name!r} run: export an "
                        "`aelab train sae` run")
    if settings.sparsity not in ARCHITECTURES:
        raise UserError(f"SAELens has no form of the sparsity {settings.sparsity!r}; export a run trained with one of "
                        f"{', '.join(ARCHITECTURES)}")
    if model.data_kind != "vectors" or settings.hidden or settings.arch != "mlp":
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
    check_exportable(config, model)
    metadata = {"exported_by": "aelab", "aelab_run": str(Path(run).resolve()), "data": config.data.path}
    tensors = {k: v.float() for k, v in model.dictionary().items()}
    tensorfile.write(out / FILES[1], tensors, {"format": "pt"})
    files.write_text(out / FILES[0], json.dumps(saelens_config(config.model, metadata), indent=2) + "\n")
    return out
