"""A Hugging Face transformer's activations at one module over a text corpus, as training data for an SAE, and the
contexts that fire an SAE's units. Beside ACTS.npy (n_tokens, width), written one batch at a time through a memory map:

    ACTS.index.npy   (n, 2) int64: each row's (document, position), position counted from the document's start
    ACTS.tokens.npy  (n,) int32: each row's token id
    ACTS.json        the model folder, the layer, the text, and each token id's text (so that reports show contexts
                     without the tokenizer, or transformers, installed)

`transformers` (the `aelab[hf]` extra) is imported only here, and only by write_text_activations.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from aelab.errors import UserError
from aelab.storage import files

HF_HINT = "install the extra with `pip install 'aelab[hf]'` (transformers)"
SHOWN_LAYERS = 6  # names a wrong --layer lists


def read_documents(path: Path) -> list[str]:
    """The documents of a UTF-8 text file, one per non-empty line."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read --text {path} ({e.strerror or e}); give a UTF-8 text file, one document a "
                        "line, or a .npy of token ids") from None
    try:
        text = raw.decode("utf-8")
        if "\x00" in text:
            raise UnicodeDecodeError("utf-8", raw, raw.index(b"\x00"), raw.index(b"\x00") + 1, "NUL byte")
    except UnicodeDecodeError as e:
        raise UserError(f"--text {path} is not text (byte {e.start} is not UTF-8 text); give a UTF-8 text file, one "
                        "document a line, or a .npy of token ids") from None
    documents = [line for line in text.splitlines() if line.strip()]
    if not documents:
        raise UserError(f"--text {path} holds no text; give a UTF-8 text file, one document a line")
    return documents


def read_token_file(path: Path) -> list[np.ndarray]:
    """Documents as token ids from a .npy: one document (n,) or several of one length (documents, n)."""
    from aelab.data.readers import read_array_file

    array = read_array_file(path)["images"]
    if array.ndim not in (1, 2) or not np.issubdtype(array.dtype, np.integer) or array.size == 0:
        raise UserError(f"--text {path} holds {array.dtype} values of shape {array.shape}, not token ids; give a .npy "
                        "of integers (tokens,) or (documents, tokens), or a UTF-8 text file")
    return list(np.atleast_2d(array).astype(np.int64))


def _hf_module(model, name: str) -> torch.nn.Module:
    modules = dict(model.named_modules())
    if not name or name not in modules:
        blocks = [n for n, m in modules.items() if n and isinstance(m, torch.nn.ModuleList)]
        shown = [f"{blocks[0]}.{i}" for i in range(min(3, len(modules[blocks[0]])))] if blocks else []
        shown = (shown + [n for n in modules if n and n not in shown])[:SHOWN_LAYERS]
        raise UserError(f"the model has no module {name!r}; give --layer one of its {len(modules) - 1} modules, "
                        f"e.g. {', '.join(shown)} (a block's name takes its output, the residual stream)")
    return modules[name]


def _load(model_dir: Path, need_tokenizer: bool):
    """(model, tokenizer or None) from a local folder, nothing downloaded."""
    if not (model_dir / "config.json").is_file():
        raise UserError(f"{model_dir} is not a Hugging Face model folder (no config.json); give --hf a folder "
                        "written by save_pretrained")
    try:
        import transformers
    except ImportError:
        raise UserError(f"--hf needs transformers; {HF_HINT}") from None
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()  # its bars for loading weights: not aelab's output
    try:
        model = transformers.AutoModel.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"cannot load a model from {model_dir} ({str(e).splitlines()[0][:200]}); give --hf a "
                        "folder written by save_pretrained") from None
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        if need_tokenizer:
            raise UserError(f"cannot load a tokenizer from {model_dir} ({str(e).splitlines()[0][:200]}); save the "
                            "tokenizer in the folder, or give --text a .npy of token ids") from None
        tokenizer = None
    return model.eval(), tokenizer


def _windows(documents: list[np.ndarray], context: int) -> list[tuple[int, int, np.ndarray]]:
    """(document, first position, tokens) of each stretch of at most `context` tokens the model sees at once."""
    return [(d, start, tokens[start:start + context]) for d, tokens in enumerate(documents)
            for start in range(0, len(tokens), context)]


@torch.no_grad()
def write_text_activations(model_dir: str | Path, layer: str, text: str | Path, out: str | Path,
                           dtype: str = "float32", batch_size: int = 8, context: int | None = None,
                           overwrite: bool = False) -> dict:
    """Write the output of module `layer` of the model in `model_dir` at every token of `text` (a UTF-8 file, one
    document a line, or a .npy of token ids) to `out` (.npy) and its sidecars; documents longer than `context`
    tokens (default: the model's positions, at most 1024) are seen in consecutive stretches of that many.
    `batch_size` stretches go through the model at a time, and only their activations are held in memory. Returns
    the description written."""
    from aelab.data.activations import DTYPES, write_streamed
    from aelab.storage.folders import ActivationFiles

    owner = ActivationFiles(out)  # links refused; the user's own files replaced only where aelab wrote the set
    model_dir, text, out = Path(model_dir), Path(text), owner.path
    if dtype not in DTYPES:
        raise UserError(f"--dtype takes {' or '.join(DTYPES)}")
    index_path, json_path, tokens_path = owner.index_path, owner.marker_path, owner.tokens_path
    owner.claim(overwrite)
    if not text.is_file():
        raise UserError(f"--text {text} is not a file; give a UTF-8 text file, one document a line, or a .npy of "
                        "token ids")
    token_file = text.suffix.lower() == ".npy"
    documents = read_token_file(text) if token_file else read_documents(text)
    model, tokenizer = _load(model_dir, need_tokenizer=not token_file)
    module = _hf_module(model, layer)
    if not token_file:
        documents = [np.asarray(tokenizer(d, add_special_tokens=False)["input_ids"], dtype=np.int64)
                     for d in documents]
        documents = [d for d in documents if len(d)]
    vocab = model.get_input_embeddings().num_embeddings
    if not documents or any(d.min() < 0 or d.max() >= vocab for d in documents):
        raise UserError(f"--text {text} holds token ids outside the model's vocabulary 0-{vocab - 1}; give ids of "
                        "this model's tokenizer")
    limit = min(getattr(model.config, "max_position_embeddings", None) or 1024, 1024)
    context = min(context or limit, limit)
    windows = _windows(documents, context)
    rows = sum(len(d) for d in documents)

    def padded(batch):  # (ids, mask) (b, longest), padded on the right: a causal model's tokens never see it
        ids = torch.zeros((len(batch), max(len(t) for *_, t in batch)), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, (*_, t) in enumerate(batch):
            ids[i, :len(t)], mask[i, :len(t)] = torch.from_numpy(t), 1
        return ids, mask

    def take(output, batch):
        output, (ids, mask) = output[0] if isinstance(output, tuple) else output, batch
        if output.dim() != 3 or output.shape[:2] != ids.shape:
            raise UserError(f"module {layer} gives {tuple(output.shape)}, not one vector per token (batch, tokens, "
                            "width); give --layer a module that does, e.g. a block")
        return output[mask.bool()].float().numpy()  # (tokens of the batch, width), in document order

    batches = (padded(windows[first:first + batch_size]) for first in range(0, len(windows), batch_size))
    owner.begin(overwrite)  # the description's file before the activations: it marks the set as aelab's
    width = write_streamed(module, out, rows, dtype, batches,
                           lambda b: model(input_ids=b[0], attention_mask=b[1]), take)
    index = np.concatenate([np.stack([np.full(len(t), d), np.arange(start, start + len(t))], 1)
                            for d, start, t in windows]).astype(np.int64)
    tokens = np.concatenate(documents).astype(np.int32)
    with files.atomic(index_path) as f:
        np.save(f, index)
    with files.atomic(tokens_path) as f:
        np.save(f, tokens)
    pieces = None if tokenizer is None else {int(i): tokenizer.decode([int(i)]) for i in np.unique(tokens)}
    described = {"hf": str(model_dir.resolve()), "model_type": model.config.model_type, "layer": layer,
                 "text": str(text.resolve()), "documents": len(documents), "context": context, "rows": rows,
                 "width": int(width), "dtype": dtype, "pieces": pieces}
    files.write_text(json_path, json.dumps(described, indent=1) + "\n")
    return described


def top_contexts(model, acts: str | Path, described: dict, units: int = 16, per_unit: int = 5, before: int = 12,
                 after: int = 3) -> list[dict]:
    """Each of an SAE's first `units` firing units with the `per_unit` tokens of `acts` (written by
    write_text_activations) that activate it most, strongest first: {"unit", "contexts": [{"value", "document",
    "position", "before", "token", "after"}]}, the texts of up to `before` and `after` tokens of the same document
    around the firing one."""
    from aelab.data.activations import sidecar_paths, top_activating

    index = np.load(sidecar_paths(acts)[0])
    tokens = np.load(Path(acts).with_suffix(".tokens.npy"))
    if index.shape != (len(tokens), 2):
        raise UserError(f"{acts}'s index and tokens do not match; write the activations again")
    pieces = described.get("pieces") or {}
    piece = lambda i: pieces.get(str(int(i)), f"[{int(i)}]")  # noqa: E731 (the id itself, without a tokenizer)
    shown, rows, values = top_activating(model, acts, units, per_unit)
    found = []
    for unit, unit_rows, unit_values in zip(shown, rows, values):
        contexts = []
        for r, v in zip(unit_rows, unit_values):
            if v <= 0:
                continue
            same = lambda j: 0 <= j < len(tokens) and index[j, 0] == index[r, 0]  # noqa: E731
            left = [j for j in range(r - before, r) if same(j)]
            right = [j for j in range(r + 1, r + 1 + after) if same(j)]
            contexts.append({"value": float(v), "document": int(index[r, 0]), "position": int(index[r, 1]),
                             "before": "".join(piece(tokens[j]) for j in left), "token": piece(tokens[r]),
                             "after": "".join(piece(tokens[j]) for j in right)})
        found.append({"unit": int(unit), "contexts": contexts})
    return found


def contexts_markdown(found: list[dict]) -> str:
    """top_contexts as Markdown: one list per unit, the firing token in bold."""
    def clean(s: str) -> str:
        s = s.replace("\n", " ")
        for c in "\\`*_[]<>|#":
            s = s.replace(c, "\\" + c)
        return s

    def marked(token: str) -> str:  # spaces outside the bold, where Markdown reads it
        core = token.strip() or "\u2423"  # a token of spaces alone shows as the open box
        start = token.find(core) if token.strip() else len(token)
        return f"{clean(token[:start])}**{clean(core)}**{clean(token[start + len(core):]) if token.strip() else ''}"

    lines = []
    for u in found:
        lines.append(f"- unit {u['unit']}:")
        lines += [f"  - {c['value']:.3f} (document {c['document']}, token {c['position']}): "
                  f"{clean(c['before'])}{marked(c['token'])}{clean(c['after'])}" for c in u["contexts"]]
    return "\n".join(lines)
