"""Parity: lmlab's tiktoken fast path vs HF ``tokenizers``, and GPT-2 import vs a reference tiktoken.

The reference GPT-2 Encoding is built here from the two shared files with tiktoken's own
recipe (data-gym byte map, ranks from encoder.json), independently of lmlab's importer.
"""

from __future__ import annotations

import functools
import json
import sysconfig
from pathlib import Path

import pytest
import tiktoken

from lmlab.tokenizer import GPT2_PATTERN, BPETokenizer, load_tokenizer, train_tokenizer

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
GPT2 = DATA / "gpt2"
TEXTS = DATA / "tokenizer-texts"
TINYSTORIES = DATA / "tinystories" / "tinystories_val_subset.txt"
EOT = "<|endoftext|>"


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data missing: {path} (expected ../shared/data beside the repo)")
    return path


@functools.cache
def stdlib_texts() -> list[str]:
    """Every UTF-8 .py file of the standard library (site-packages excluded), sorted by path."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for p in sorted(root.rglob("*.py")):
        if "site-packages" in p.parts or "dist-packages" in p.parts:
            continue
        try:
            out.append(p.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, OSError):
            continue
    return out


def sample_texts() -> list[str]:
    """The tokenizer-texts files plus ~300 kB of real stdlib code in 50 kB pieces."""
    texts = [p.read_text(encoding="utf-8") for p in sorted(need(TEXTS).iterdir()) if p.is_file()]
    code = "".join(stdlib_texts()[100:160])[:300_000]
    assert len(code) == 300_000
    return texts + [code[i : i + 50_000] for i in range(0, len(code), 50_000)]


def reference_gpt2() -> tiktoken.Encoding:
    """tiktoken's GPT-2 recipe (tiktoken.load.data_gym_to_mergeable_bpe_ranks) on the local files."""
    printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    dg = {chr(b): b for b in printable}
    n = 0
    for b in range(256):
        if b not in printable:
            dg[chr(256 + n)] = b
            n += 1
    encoder = json.loads((need(GPT2) / "gpt2_vocab.json").read_text(encoding="utf-8"))
    ranks = {bytes(dg[c] for c in k): v for k, v in encoder.items() if k != EOT}
    # tiktoken asserts the encoder agrees with the merges file; so do we (merge i -> id 256+i).
    merges = (GPT2 / "gpt2_merges.txt").read_text(encoding="utf-8").splitlines()
    merges = [m for m in merges if m and not m.startswith("#version")]
    assert len(merges) == 50000
    assert all(
        ranks[bytes(dg[c] for c in a + b)] == 256 + i
        for i, (a, b) in enumerate(m.split(" ") for m in merges)
    )
    return tiktoken.Encoding(
        "gpt2-ref", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={EOT: encoder[EOT]}
    )


@pytest.fixture(scope="module")
def gpt2() -> BPETokenizer:
    tok = load_tokenizer(need(GPT2))
    assert isinstance(tok, BPETokenizer)
    return tok


@pytest.fixture(scope="module")
def ref() -> tiktoken.Encoding:
    return reference_gpt2()


def test_gpt2_import_tables(gpt2: BPETokenizer) -> None:
    assert gpt2.vocab_size == 50257 and gpt2.eot_id == 50256 and gpt2.special_tokens == {EOT: 50256}
    assert len(gpt2.merges) == 50000 and gpt2.merges[0] == (b" ", b"t")
    assert gpt2.vocab[50256] == EOT.encode() and gpt2.vocab[220] == b" "
    assert gpt2.tiktoken_encoding is not None and gpt2._rank_to_id is None  # ids are ranks
    assert gpt2.encode("Hello world" + EOT) == [15496, 995, 50256]  # well-known GPT-2 ids


def test_gpt2_matches_reference_on_texts(gpt2: BPETokenizer, ref: tiktoken.Encoding) -> None:
    texts = sample_texts()
    expect = [ref.encode(t, allowed_special="all") for t in texts]
    assert [gpt2.encode(t) for t in texts] == expect
    assert [gpt2.encode_hf(t) for t in texts] == expect
    assert gpt2.encode_ordinary_batch(texts) == ref.encode_ordinary_batch(texts)
    assert all(gpt2.decode(e) == t for e, t in zip(expect, texts))


def test_gpt2_via_tokenizer_json(
    gpt2: BPETokenizer, ref: tiktoken.Encoding, tmp_path: Path
) -> None:
    """Saving the import writes a HF tokenizer.json; loading that file gives the same ids."""
    gpt2.save(tmp_path / "g")
    again = load_tokenizer(tmp_path / "g" / "tokenizer.json")
    assert again.fingerprint() == gpt2.fingerprint()
    text = (TEXTS / "corpus.en").read_text(encoding="utf-8")
    assert again.encode(text) == ref.encode(text)


@pytest.mark.slow
def test_gpt2_matches_reference_on_whole_stdlib(gpt2: BPETokenizer, ref: tiktoken.Encoding) -> None:
    """All ~31 MB of stdlib code: lmlab's fast path (whole) and tokenizers path (every 8th file)."""
    texts = stdlib_texts()
    assert len(texts) > 1000
    expect = ref.encode_ordinary_batch(texts)
    assert gpt2.encode_ordinary_batch(texts) == expect
    some = list(range(0, len(texts), 8))
    assert gpt2.encode_hf_batch([texts[i] for i in some]) == [expect[i] for i in some]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> BPETokenizer:
    out = tmp_path_factory.mktemp("tokp") / "t"
    tok = train_tokenizer(
        [str(need(TINYSTORIES))], vocab_size=2000, out=out, special_tokens=[EOT, "<|pad|>"]
    )
    assert isinstance(tok, BPETokenizer)
    return tok


def test_trained_fast_path_matches_tokenizers(trained: BPETokenizer) -> None:
    assert trained.tiktoken_encoding is not None and trained._rank_to_id is None
    texts = sample_texts() + [f"a{EOT}b<|pad|>{EOT}"]
    assert trained.encode_ordinary_batch(texts) == trained.encode_hf_batch(
        texts, allow_special=False
    )
    assert trained.encode_batch(texts) == trained.encode_hf_batch(texts, allow_special=True)
    assert [trained.encode(t) for t in texts[:6]] == [trained.encode_hf(t) for t in texts[:6]]


def test_ids_out_of_merge_order_use_translation(trained: BPETokenizer, tmp_path: Path) -> None:
    """A tokenizer.json whose merge-result ids are shuffled still encodes like tokenizers."""
    spec = json.loads(trained._json)
    vocab = spec["model"]["vocab"]
    first_merge_id = 2 + 256
    tokens = sorted(vocab, key=vocab.get)[first_merge_id:]
    for new, tkn in zip(range(first_merge_id, len(vocab)), reversed(tokens)):
        vocab[tkn] = new
    (tmp_path / "shuffled.json").write_text(json.dumps(spec))
    tok = load_tokenizer(tmp_path / "shuffled.json")
    assert isinstance(tok, BPETokenizer)
    assert tok.tiktoken_encoding is not None and tok._rank_to_id is not None
    texts = sample_texts()[:8] + [f"x{EOT}y"]
    assert tok.encode_batch(texts) == tok.encode_hf_batch(texts, allow_special=True)
    assert tok.encode_ordinary_batch(texts) != trained.encode_ordinary_batch(
        texts
    )  # ids really moved
    assert all(tok.decode(tok.encode(t)) == t for t in texts)


def test_unreachable_vocab_entry_not_used_by_fast_path(
    trained: BPETokenizer, tmp_path: Path
) -> None:
    spec = json.loads(trained._json)
    spec["model"]["vocab"]["Ġquiteunusual"] = len(spec["model"]["vocab"]) + 2  # no merge makes it
    (tmp_path / "extra.json").write_text(json.dumps(spec))
    tok = load_tokenizer(tmp_path / "extra.json")
    text = "a quiteunusual word, quiteunusual"
    assert tok.encode(text) == tok.encode_hf(text)
    assert (
        tok.vocab[tok.vocab_size - 1] == b" quiteunusual"
        and tok.decode([tok.vocab_size - 1]) == " quiteunusual"
    )


def test_saved_truncation_padding_and_stripping_added_tokens(
    trained: BPETokenizer, tmp_path: Path
) -> None:
    spec = json.loads(trained._json)
    spec["truncation"] = {
        "direction": "Right",
        "max_length": 4,
        "strategy": "LongestFirst",
        "stride": 0,
    }
    spec["added_tokens"][1]["lstrip"] = True  # <|pad|> swallows the space before it (RoBERTa-style)
    (tmp_path / "trunc.json").write_text(json.dumps(spec))
    tok = load_tokenizer(tmp_path / "trunc.json")
    assert tok.tiktoken_encoding is None  # tiktoken cannot strip around a special token
    text = "Once upon a time there was a cat <|pad|>"
    ids = tok.encode(text)
    assert (
        len(ids) > 4
        and ids[-1] == 1
        and ids[:-1] == trained.encode("Once upon a time there was a cat")
    )


def test_unmirrorable_tokenizer_json_falls_back(trained: BPETokenizer, tmp_path: Path) -> None:
    spec = json.loads(trained._json)
    spec["normalizer"] = {"type": "Lowercase"}
    (tmp_path / "lower.json").write_text(json.dumps(spec))
    tok = load_tokenizer(tmp_path / "lower.json")
    assert tok.tiktoken_encoding is None
    assert tok.encode("Hello THERE") == trained.encode("hello there")
    assert tok.encode_ordinary_batch(["Hi" + EOT]) == trained.encode_ordinary_batch(
        ["hi" + EOT.lower()]
    )


CL100K_LIKE = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""


def test_split_pretokenizer_tokenizer_json(trained: BPETokenizer, tmp_path: Path) -> None:
    """Llama-3/cl100k-style files (Split regex + ByteLevel without regex) keep the fast path."""
    spec = json.loads(trained._json)
    spec["pre_tokenizer"] = {
        "type": "Sequence",
        "pretokenizers": [
            {
                "type": "Split",
                "pattern": {"Regex": CL100K_LIKE},
                "behavior": "Isolated",
                "invert": False,
            },
            {
                "type": "ByteLevel",
                "add_prefix_space": False,
                "trim_offsets": True,
                "use_regex": False,
            },
        ],
    }
    (tmp_path / "split.json").write_text(json.dumps(spec))
    tok = load_tokenizer(tmp_path / "split.json")
    assert tok.pattern == CL100K_LIKE and tok.tiktoken_encoding is not None
    texts = sample_texts() + ["x.\n\ny  \n\tz 12345 it's"]
    assert tok.encode_batch(texts) == tok.encode_hf_batch(texts, allow_special=True)
    f = tmp_path / "code.txt"
    f.write_text(texts[-2] + texts[-1], encoding="utf-8")
    assert [i for c in tok.encode_file(f, chunk_bytes=100) for i in c] == tok.encode_ordinary(
        texts[-2] + texts[-1]
    )


def test_other_tokenizer_json_families(tmp_path: Path) -> None:
    """Sentencepiece-style BPE (Metaspace, byte fallback) and WordPiece load as the hf kind."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    from lmlab.tokenizer import HFTokenizer

    corpus = [(need(TEXTS) / "corpus.en").read_text(encoding="utf-8")]
    sp = Tokenizer(models.BPE(byte_fallback=True, unk_token=None))
    sp.pre_tokenizer = pre_tokenizers.Metaspace()
    sp.decoder = decoders.Sequence([decoders.Metaspace(), decoders.ByteFallback(), decoders.Fuse()])
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    sp.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=600, special_tokens=["<s>", *byte_tokens], show_progress=False
        ),
    )
    spec = json.loads(sp.to_str())  # byte tokens live in the model vocab, as in Llama's file
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["content"] == "<s>"]
    (tmp_path / "sp.json").write_text(json.dumps(spec), encoding="utf-8")
    tok = load_tokenizer(tmp_path / "sp.json")
    assert isinstance(tok, HFTokenizer) and tok.kind == "hf" and tok.special_tokens["<s>"] == 0
    assert tok.vocab[1] == b"\x00" and tok.vocab[0x41 + 1] == b"A"
    text = "Hello world, the café 🙂<s>"
    ids = tok.encode(text)
    assert ids[-1] == 0 and tok.decode(ids) == text
    assert tok.decode_bytes(tok.encode("the world")).strip() == b"the world"
    (tmp_path / "lines.txt").write_text("first line\nsecond line\n" * 20, encoding="utf-8")
    streamed = [i for c in tok.encode_file(tmp_path / "lines.txt", chunk_bytes=8) for i in c]
    assert streamed == tok.encode_ordinary("first line\nsecond line\n" * 20)
    tok.save(tmp_path / "saved")
    again = load_tokenizer(tmp_path / "saved")
    assert isinstance(again, HFTokenizer) and again.encode(text) == ids

    wp = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wp.normalizer = normalizers.BertNormalizer(lowercase=True)
    wp.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wp.decoder = decoders.WordPiece()
    wp.train_from_iterator(
        corpus,
        trainers.WordPieceTrainer(
            vocab_size=400, special_tokens=["[UNK]", "[CLS]"], show_progress=False
        ),
    )
    (tmp_path / "wp").mkdir()
    wp.save(str(tmp_path / "wp" / "tokenizer.json"))
    wtok = load_tokenizer(tmp_path / "wp")
    assert isinstance(wtok, HFTokenizer) and wtok.merges == []
    ids = wtok.encode("The Government said")
    assert wtok.decode(ids) == "the government said"  # lossy by design of this tokenizer
    assert all(not b.startswith(b"##") for b in wtok.vocab.values())
