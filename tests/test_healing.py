"""Token healing (lmlab.healing): a prompt ending in a newline gets its function body.

The model here is a bigram table counted from a small code corpus with the corpus's own BPE
tokenizer: byte-level BPE merges a newline with the indentation after it, so in that corpus
a lone newline token only ever comes before column-0 code, the failure the demo showed.
"""

from __future__ import annotations

import torch

from lmlab.eval.code import adds_code, compiles, cut_completion
from lmlab.healing import generate_healed, generate_healed_rows, healing_split
from lmlab.sample import generate

CORPUS = (
    'def first(a):\n    """One more."""\n    return a + 1\n\n\n'
    'def second(b):\n    """Twice b."""\n    total = b * 2\n    return total\n\n\n'
    "def third(items):\n    for item in items:\n        print(item)\n    return None\n\n\n"
) * 20
PROMPT = 'def fourth(value):\n    """Twice the value."""\n'


class Bigram(torch.nn.Module):
    """Next-token logits from the last token alone: log bigram counts (plus a little smoothing)."""

    def __init__(self, ids: list[int], vocab_size: int):
        super().__init__()
        counts = torch.full((vocab_size, vocab_size), 1e-3)
        for a, b in zip(ids, ids[1:]):
            counts[a, b] += 1.0
        self.table = torch.nn.Parameter(counts.log())

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, V)
        return self.table[x]


def _setup(tmp_path):
    from lmlab.tokenizer.train import train_tokenizer

    corpus = tmp_path / "corpus.py"
    corpus.write_text(CORPUS)
    tok = train_tokenizer([str(corpus)], 320, tmp_path / "tok", special_tokens=["<|endoftext|>"])
    return tok, Bigram(tok.encode(CORPUS), tok.vocab_size)


def _passes(prompt: str, text: str) -> bool:
    kept, _ = cut_completion(prompt, text)
    return compiles(prompt + kept)[0] and adds_code(prompt, kept)


def test_the_prompt_ends_on_a_token_seen_only_before_column_zero(tmp_path):
    tok, _ = _setup(tmp_path)
    ids = tok.encode(PROMPT)
    assert tok.decode([ids[-1]]) == "\n"  # the newline stands alone ...
    body = tok.encode(PROMPT + "    return value\n")
    assert tok.decode([body[len(ids) - 1]]).startswith("\n ")  # ... but merges with an indent


def test_healing_lets_the_model_write_the_body(tmp_path):
    tok, model = _setup(tmp_path)
    plain = generate(model, tok, PROMPT, max_new_tokens=24, temperature=0)[0].text
    healed = generate_healed(model, tok, PROMPT, max_new_tokens=24, temperature=0)[0].text
    assert not plain.startswith(" ") and not _passes(PROMPT, plain)  # `def ...` at column 0
    assert healed.startswith("    ") and _passes(PROMPT, healed), healed


def test_healed_text_is_exactly_what_follows_the_prompt(tmp_path):
    tok, model = _setup(tmp_path)
    streamed: dict[int, list[str]] = {}
    samples = generate_healed(
        model,
        tok,
        PROMPT,
        max_new_tokens=20,
        temperature=1.0,
        num_samples=6,
        seed=3,
        stream_callback=lambda i, t: streamed.setdefault(i, []).append(t),
    )
    assert len(samples) == 6
    for i, s in enumerate(samples):
        assert tok.decode(s.prompt_tokens + s.tokens) == PROMPT + s.text
        assert len(s.tokens) <= 20
        assert "".join(streamed[i]) == s.text
    again = generate_healed(
        model, tok, PROMPT, max_new_tokens=20, temperature=1.0, num_samples=6, seed=3
    )
    assert [s.text for s in again] == [s.text for s in samples]


def test_stop_when_sees_the_healed_text_and_ends_the_body(tmp_path):
    # The demo's syntax check stops a sample once its function has ended; asked with the text
    # after the prompt (the re-chosen token's lead included), it keeps the verdict and text
    # that cutting the whole sample gives.
    from lmlab.eval.code import function_ended

    tok, model = _setup(tmp_path)
    kw = dict(max_new_tokens=40, temperature=1.0, num_samples=4, seed=1)
    free = generate_healed(model, tok, PROMPT, **kw)
    held = generate_healed(
        model, tok, PROMPT, stop_when=lambda _i, t: function_ended(PROMPT, t), **kw
    )
    stopped = 0
    for f, h in zip(free, held):
        assert f.text.startswith(h.text)
        assert cut_completion(PROMPT, h.text)[0] == cut_completion(PROMPT, f.text)[0]
        stopped += h.finish_reason == "stop" and len(h.text) < len(f.text)
    assert stopped >= 1


def test_what_is_not_healed(tmp_path):
    tok, _ = _setup(tmp_path)
    one = tok.encode("def")
    assert len(one) == 1 and healing_split(tok, one) == (one, b"", [])
    eot = tok.encode("x = 1\n") + [tok.eot_id]
    assert healing_split(tok, eot) == (eot, b"", [])  # a special token stays
    ids = tok.encode(PROMPT)
    head, tail, allowed = healing_split(tok, ids)
    assert head == ids[:-1] and tail == b"\n" and ids[-1] in allowed
    assert tok.eot_id not in allowed
    assert all(tok.vocab[i].startswith(b"\n") for i in allowed)


def test_rows_of_different_prompts_are_healed_as_each_would_be_alone(tmp_path):
    """One batch of several prompts (left-padded in a transformer, batched by length in the
    bigram): each row greedy-decodes what its prompt gives alone, healed."""
    import dataclasses

    from lmlab.config import ModelConfig
    from lmlab.model import build_model

    tok, bigram = _setup(tmp_path)
    prompts = [PROMPT, "def first(a):\n", PROMPT, 'def second(b):\n    """Twice b."""\n']
    cfg = ModelConfig(vocab_size=tok.vocab_size, n_layer=2, n_head=2, d_model=16, context_length=24)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # greedy ties would differ by rounding otherwise
    try:
        torch.manual_seed(0)
        llama = build_model(dataclasses.replace(cfg, position="rope")).eval()
        for model in (bigram, llama):
            kw = dict(max_new_tokens=30, temperature=0)  # windows slide by 1: as alone
            rows = generate_healed_rows(model, tok, prompts, **kw)
            for prompt, row in zip(prompts, rows):
                alone = generate_healed(model, tok, prompt, **kw)[0]
                assert (row.text, row.tokens) == (alone.text, alone.tokens)
                assert tok.decode(row.prompt_tokens + row.tokens) == prompt + row.text
    finally:
        torch.set_default_dtype(old)
