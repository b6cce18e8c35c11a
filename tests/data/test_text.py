"""`aelab activations --hf`: a Hugging Face transformer's activations over text, streamed to .npy with the tokens and
their (document, position), and an SAE trained on them whose report shows each unit's top-activating contexts. On a
tiny randomly initialised GPT-2 and a byte-level BPE tokenizer trained here on a few sentences: nothing downloaded.
One process: importing transformers' GPT-2 takes seconds."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from support.process import assert_user_error, in_process

transformers = pytest.importorskip("transformers")

SENTENCES = ["the cat sat on the mat", "a dog ran in the park", "the sun is hot and the sky is blue",
             "cats and dogs play in the garden", "she reads a book by the window"]
LONG = "the cat and the dog sat in the sun for a long long time by the blue window"  # cut into stretches of 10
CORPUS = SENTENCES * 8 + [LONG] * 4


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    folder = tmp_path_factory.mktemp("hf") / "gpt2"
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer, bpe.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    bpe.train_from_iterator(SENTENCES, trainers.BpeTrainer(vocab_size=300, show_progress=False,
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    transformers.PreTrainedTokenizerFast(tokenizer_object=bpe).save_pretrained(folder)
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=bpe.get_vocab_size(), n_positions=32, n_embd=16, n_layer=2, n_head=2,
                                     bos_token_id=0, eos_token_id=0)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    text = folder.parent / "corpus.txt"
    text.write_text("\n".join(CORPUS) + "\n\n")  # a blank line is no document
    return folder, text


@pytest.fixture(scope="module")
def acts(gpt2, tmp_path_factory):
    import contextlib
    import io

    from aelab.cli import main

    folder, text = gpt2
    out = tmp_path_factory.mktemp("acts") / "acts.npy"
    with contextlib.redirect_stdout(io.StringIO()) as said:
        assert main(["activations", "--hf", str(folder), "--layer", "h.0", "--text", str(text), "--out", str(out),
                     "--context", "10", "--batch-size", "5"]) == 0
    assert "at h.0 to" in said.getvalue()
    return out


def test_activations_are_the_blocks_output_at_each_token(gpt2, acts):
    folder, text = gpt2
    data, index, tokens = (np.load(acts.with_suffix(s)) for s in (".npy", ".index.npy", ".tokens.npy"))
    described = json.loads(acts.with_suffix(".json").read_text())
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    documents = [tokenizer(line)["input_ids"] for line in text.read_text().splitlines() if line]
    assert data.shape == (sum(map(len, documents)), 16) and data.dtype == np.float32
    assert described["rows"] == len(data) and described["documents"] == len(documents) == 44
    assert tokens.tolist() == sum(documents, [])
    assert index.tolist() == [[d, p] for d, doc in enumerate(documents) for p in range(len(doc))]
    assert len(documents[-1]) > 10  # seen in stretches of 10 tokens, each from its own start
    model = transformers.AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        for d in (0, 7, 43):  # the first block's output: hidden state 1
            first = int(np.flatnonzero(index[:, 0] == d)[0])
            for start in range(0, len(documents[d]), 10):
                ids = torch.tensor([documents[d][start:start + 10]])
                expected = model(ids, output_hidden_states=True).hidden_states[1][0].numpy()
                got = data[first + start:first + start + len(expected)]
                np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert described["pieces"][str(tokens[1])] == tokenizer.decode([int(tokens[1])])


def test_token_ids_give_the_same_activations(gpt2, acts, tmp_path, capsys):
    folder, _ = gpt2
    ids = tmp_path / "ids.npy"
    np.save(ids, np.load(acts.with_suffix(".tokens.npy"))[:8])  # the first document's 6 tokens, and 2 more
    out = tmp_path / "ids-acts.npy"
    assert in_process(["activations", "--hf", folder, "--layer", "h.0", "--text", ids, "--out", out], capsys
                      ).returncode == 0
    np.testing.assert_allclose(np.load(out)[:6], np.load(acts)[:6], rtol=1e-4, atol=1e-5)


def test_sae_report_shows_each_units_top_contexts(acts, tmp_path, capsys, one_thread):
    run = tmp_path / "sae"
    result = in_process(["train", "sae", "--data", acts, "--epochs", 2, "--batch-size", 64, "--latent", 32, "--set",
                         "k=4", "--threads", 1, "--out", run, "--grid-every", 0], capsys)
    assert result.returncode == 0, result.stderr[-2000:]
    report = (run / "report.md").read_text()
    assert "## Top-activating contexts" in report and "module h.0" in report
    page = (run / "report.html").read_text()
    data = json.loads(page.split('"contexts":', 1)[1].split(',"summary"', 1)[0])
    described = json.loads(acts.with_suffix(".json").read_text())
    index, tokens = np.load(acts.with_suffix(".index.npy")), np.load(acts.with_suffix(".tokens.npy"))
    assert len(data["units"]) == 16
    for unit in data["units"]:
        assert unit["contexts"] and [c["value"] for c in unit["contexts"]] == sorted(
            (c["value"] for c in unit["contexts"]), reverse=True)
        for c in unit["contexts"]:  # the marked token is the one at that document and position, in the report too
            row = int(np.flatnonzero((index == [c["document"], c["position"]]).all(1))[0])
            assert c["token"] == described["pieces"][str(tokens[row])]
            assert c["before"] + c["token"] + c["after"] in CORPUS[c["document"]]
            assert f"(document {c['document']}, token {c['position']})" in report
    shown = data["units"][0]["contexts"][0]
    assert f"**{shown['token'].strip()}" in report.replace("** ", "**")


def test_bad_inputs_get_one_line_and_nothing_written(gpt2, tmp_path, capsys):
    folder, text = gpt2
    out = tmp_path / "a.npy"
    binary = tmp_path / "corpus.bin"
    binary.write_bytes(bytes(range(256)))
    for argv, words in (
            (["--hf", tmp_path, "--layer", "h.0", "--text", text], ("not a Hugging Face model folder", "config.json")),
            (["--hf", folder, "--layer", "h.9", "--text", text], ("no module 'h.9'", "h.0, h.1")),
            (["--hf", folder, "--layer", "h.0", "--text", binary], ("not text", "UTF-8")),
            (["--hf", folder, "--layer", "h.0"], ("--text",))):
        assert_user_error(in_process(["activations", *argv, "--out", out], capsys), *words)
        assert not list(tmp_path.glob("a.*"))


def test_a_link_or_the_users_own_file_is_never_replaced(gpt2, tmp_path, capsys):
    """The transformer's activations are owned as a run's are: a link is refused, --overwrite or not, and a user's
    file of the same name is replaced only with --overwrite where aelab wrote the set."""
    folder, text = gpt2
    target = tmp_path / "target.npy"
    np.save(target, np.zeros(3))
    (tmp_path / "link.npy").symlink_to(target)
    np.save(tmp_path / "mine.npy", np.ones(3))
    args = ["activations", "--hf", folder, "--layer", "h.0", "--text", text, "--out"]
    assert_user_error(in_process([*args, tmp_path / "link.npy", "--overwrite"], capsys), "link")
    assert_user_error(in_process([*args, tmp_path / "mine.npy", "--overwrite"], capsys), "mine.npy")
    assert np.load(target).tolist() == [0, 0, 0] and np.load(tmp_path / "mine.npy").tolist() == [1, 1, 1]
