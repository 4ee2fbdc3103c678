"""The generation engine on tiny random models: cache parity, context sliding, seeds, stops."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lmlab.config import ModelConfig
from lmlab.errors import LmlabError
from lmlab.model import build_model
from lmlab.model.presets import PRESETS
from lmlab.sample import apply_repetition_penalty, generate


class ByteTok:
    """A byte-level stand-in tokenizer: ids 0..255 are bytes, 256 is <|endoftext|>."""

    def __init__(self, eot_id: int = 256):
        self.eot_id = eot_id
        self.vocab_size = 257
        self.special_tokens = {"<|endoftext|>": 256}

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode_bytes(self, ids) -> bytes:
        return b"".join(b"<|endoftext|>" if i == 256 else bytes([i]) for i in ids)

    def decode(self, ids) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")


@pytest.fixture(autouse=True)
def f64():
    """Every test here compares two ways of decoding (cached/uncached, batch/single, a reference
    loop) by their greedy tokens. In float32 their logits differ by CPU-dependent summation order
    (~1e-7), enough to flip an argmax between near-tied tokens; in float64 by ~1e-15."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def tiny(preset: str | None = None, **kw) -> torch.nn.Module:
    cfg = ModelConfig(vocab_size=257, n_layer=2, n_head=4, d_model=32, context_length=16)
    if preset:
        cfg = dataclasses.replace(cfg, **PRESETS[preset])
    cfg = dataclasses.replace(cfg, **kw)
    torch.manual_seed(0)
    model = build_model(cfg)
    # Larger weights than the default init so greedy output is not one token repeated.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    return model.eval()


def reference_greedy(model, prompt: list[int], n: int, penalty: float = 1.0) -> list[int]:
    """Plain uncached loop, cropping to the last context_length tokens."""
    ctx = model.config.context_length
    seq = list(prompt)
    out = []
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([seq[-ctx:]]))[:, -1, :]
            logits[:, 257:] = float("-inf")
            if penalty != 1.0:
                seen = torch.zeros_like(logits, dtype=torch.bool)
                seen[0, torch.tensor(seq)] = True
                logits = apply_repetition_penalty(logits, seen, penalty)
            t = int(logits.argmax(-1))
            seq.append(t)
            out.append(t)
    return out


@pytest.mark.parametrize(
    "kw",
    [
        {"preset": "llama", "n_kv_head": 2},
        {"preset": "gpt2"},
        {"position": "none"},
    ],
    ids=["llama-gqa", "gpt2", "nope"],
)
def test_cached_equals_uncached_greedy(kw):
    model = tiny(**kw)
    tok = ByteTok()
    n = 10 if model.config.position == "learned" else 30  # rope/none run past context 16
    kwargs = dict(max_new_tokens=n, temperature=0.0, stop_at_eot=False)
    cached = generate(model, tok, "hello", use_cache=True, **kwargs)[0]
    uncached = generate(model, tok, "hello", use_cache=False, **kwargs)[0]
    assert cached.tokens == uncached.tokens
    assert cached.tokens == reference_greedy(model, tok.encode("hello"), len(cached.tokens))
    assert len(cached.tokens) == n and cached.finish_reason == "length"


def reference_strided(model, prompt: list[int], n: int, every: int) -> list[int]:
    """Uncached greedy whose window start moves ``every`` tokens at a time past the context."""
    ctx = model.config.context_length
    seq, out = list(prompt), []
    with torch.no_grad():
        for _ in range(n):
            start = 0 if len(seq) <= ctx else -(-(len(seq) - ctx) // every) * every
            assert ctx - every < len(seq) - start <= ctx or start == 0
            logits = model(torch.tensor([seq[start:]]))[:, -1, :]
            logits[:, 257:] = float("-inf")
            t = int(logits.argmax(-1))
            seq.append(t)
            out.append(t)
    return out


@pytest.mark.parametrize("every", [1, 4, 16])
def test_slide_every_moves_the_window_k_tokens_at_a_time(every):
    model = tiny(preset="llama")  # context 16: 40 tokens slide it several times
    tok = ByteTok()
    kwargs = dict(max_new_tokens=40, temperature=0.0, stop_at_eot=False, slide_every=every)
    cached = generate(model, tok, "hello", use_cache=True, **kwargs)[0]
    uncached = generate(model, tok, "hello", use_cache=False, **kwargs)[0]
    assert cached.tokens == uncached.tokens
    assert cached.tokens == reference_strided(model, tok.encode("hello"), 40, every)
    if every > 1:  # a window of fewer tokens than the context: another continuation
        assert cached.tokens != reference_greedy(model, tok.encode("hello"), 40)
    with pytest.raises(LmlabError, match="slide_every"):
        generate(model, tok, "hello", max_new_tokens=2, slide_every=0)


def test_learned_positions_stop_at_context_with_message():
    model = tiny("gpt2")
    tok = ByteTok()
    for use_cache in (True, False):
        s = generate(
            model,
            tok,
            "hello",
            max_new_tokens=40,
            temperature=0.0,
            stop_at_eot=False,
            use_cache=use_cache,
        )[0]
        # 5 prompt tokens + 11 fed back fill positions 0..15; the 12th token is predicted last.
        assert len(s.tokens) == 16 - 5 + 1
        assert s.finish_reason == "context"
        assert "context length 16" in s.message and "learned positions" in s.message
    with pytest.raises(LmlabError, match="learned positions"):
        generate(model, tok, "x" * 17, max_new_tokens=2)


def test_seed_reproduces_samples_and_batch_rows_differ():
    model = tiny("llama")
    tok = ByteTok()
    kwargs = dict(max_new_tokens=12, temperature=1.0, top_k=50, top_p=0.95, num_samples=3)
    a = generate(model, tok, "ab", seed=5, **kwargs)
    b = generate(model, tok, "ab", seed=5, **kwargs)
    c = generate(model, tok, "ab", seed=6, **kwargs)
    assert [s.tokens for s in a] == [s.tokens for s in b]
    assert [s.text for s in a] == [s.text for s in b]
    assert [s.tokens for s in a] != [s.tokens for s in c]
    assert len({tuple(s.tokens) for s in a}) == 3


def test_batch_greedy_rows_match_single():
    model = tiny("llama")
    tok = ByteTok()
    one = generate(model, tok, "xyz", max_new_tokens=8, temperature=0.0, stop_at_eot=False)[0]
    many = generate(
        model, tok, "xyz", max_new_tokens=8, temperature=0.0, num_samples=3, stop_at_eot=False
    )
    assert all(s.tokens == one.tokens for s in many)


def test_temperature_near_zero_equals_greedy():
    model = tiny("llama")
    tok = ByteTok()
    greedy = generate(model, tok, "q", max_new_tokens=10, temperature=0.0, stop_at_eot=False)[0]
    cold = generate(
        model, tok, "q", max_new_tokens=10, temperature=1e-7, seed=3, stop_at_eot=False
    )[0]
    assert cold.tokens == greedy.tokens


def test_repetition_penalty_matches_reference():
    model = tiny("llama")
    tok = ByteTok()
    s = generate(
        model,
        tok,
        "aaaa",
        max_new_tokens=12,
        temperature=0.0,
        repetition_penalty=1.8,
        stop_at_eot=False,
    )[0]
    assert s.tokens == reference_greedy(model, tok.encode("aaaa"), 12, penalty=1.8)
    plain = generate(model, tok, "aaaa", max_new_tokens=12, temperature=0.0, stop_at_eot=False)[0]
    assert s.tokens != plain.tokens


def test_stop_strings_cut_and_streaming_matches_text():
    model = tiny("llama")
    tok = ByteTok()
    free = generate(model, tok, "go", max_new_tokens=20, temperature=0.0, stop_at_eot=False)[0]
    full = tok.decode(free.tokens)
    assert free.text == full
    # a two-character stop string whose first occurrence is past the start, so the cut is not empty
    at = next(i for i in range(1, len(full) - 1) if full.find(full[i : i + 2]) == i)
    stop, cut = full[at : at + 2], full[:at]
    streamed: dict[int, list[str]] = {}
    s = generate(
        model,
        tok,
        "go",
        max_new_tokens=20,
        temperature=0.0,
        stop=[stop, "\x00never"],
        num_samples=2,
        stop_at_eot=False,
        stream_callback=lambda i, t: streamed.setdefault(i, []).append(t),
    )[0]
    assert s.text == cut and s.finish_reason == "stop"
    assert "".join(streamed[0]) == cut and "".join(streamed[1]) == cut
    assert tok.decode(s.tokens).startswith(cut + stop)  # tokens run up to the stop's last byte


def test_stop_when_ends_one_sample_and_changes_no_other():
    model = tiny("llama")
    tok = ByteTok()
    kwargs = dict(max_new_tokens=14, temperature=1.0, num_samples=3, seed=2, stop_at_eot=False)
    free = generate(model, tok, "ab", **kwargs)
    asked: list[tuple[int, str]] = []

    def stop_when(i: int, text: str) -> bool:
        asked.append((i, text))
        return i == 1 and len(text) >= 5  # sample 1 ends after five characters

    held = generate(model, tok, "ab", stop_when=stop_when, **kwargs)
    assert held[1].finish_reason == "stop" and held[1].text == free[1].text[: len(held[1].text)]
    assert 5 <= len(held[1].text) < len(free[1].text)
    assert max(len(t) for i, t in asked if i == 1) == len(held[1].text)  # never asked again
    for i in (0, 2):  # the other rows drew the same tokens: the generator's stream is shared
        assert (held[i].tokens, held[i].finish_reason) == (free[i].tokens, free[i].finish_reason)
        assert [t for j, t in asked if j == i][-1] == free[i].text  # asked with the whole text


def test_eot_ends_sample_and_empty_prompt_starts_from_eot():
    model = tiny("llama")
    free = generate(model, ByteTok(), "hi", max_new_tokens=10, temperature=0.0, stop_at_eot=False)[
        0
    ]
    k = 4
    tok = ByteTok(eot_id=free.tokens[k])  # pretend the 5th greedy token is end-of-text
    s = generate(model, tok, "hi", max_new_tokens=10, temperature=0.0)[0]
    first = free.tokens.index(free.tokens[k])
    assert s.finish_reason == "eot" and s.tokens == free.tokens[:first]
    e = generate(model, ByteTok(), "", max_new_tokens=3, temperature=0.0)[0]
    assert e.prompt_tokens == [256]


def test_bad_arguments_raise_named_errors():
    model = tiny("llama")
    tok = ByteTok()
    for kw, key in [
        ({"temperature": -1}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -2}, "top_k"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"num_samples": 0}, "num_samples"),
        ({"stop": [""]}, "stop"),
    ]:
        with pytest.raises(LmlabError, match=key):
            generate(model, tok, "a", max_new_tokens=2, **kw)


def test_baseline_without_cache_still_generates():
    model = tiny(arch="bigram")
    s = generate(model, ByteTok(), "ab", max_new_tokens=5, temperature=0.0, stop_at_eot=False)[0]
    assert len(s.tokens) == 5
