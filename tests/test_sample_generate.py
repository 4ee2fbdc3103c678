"""The generation engine on tiny random models: cache parity, context sliding, seeds, stops."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lmlab.config import ModelConfig
from lmlab.errors import LmlabError
from lmlab.model import build_model
from lmlab.model.presets import PRESETS
from lmlab.sample import apply_repetition_penalty, generate, generate_rows


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


# prompts of 2, 9 and 15 bytes against a context of 16: the rows are padded by 13, 6 and 0, and
# their windows slide at different steps
ROW_PROMPTS = ["ab", "def f(x):", "hello, world!!!"]


def reference_rows(model, prompts: list[list[int]], n: int, every: int) -> list[list[int]]:
    """Uncached greedy of each row on its own, its window the batch's: the columns of the
    left-padded batch from the start that ``every`` gives the batch's length."""
    ctx, width = model.config.context_length, max(map(len, prompts))
    seqs, outs = [list(p) for p in prompts], [[] for _ in prompts]
    with torch.no_grad():
        for step in range(n):
            length = width + step  # the batch's columns
            start = 0 if length <= ctx else -(-(length - ctx) // every) * every
            for seq, out, prompt in zip(seqs, outs, prompts):
                pad = width - len(prompt)
                logits = model(torch.tensor([seq[max(0, start - pad) :]]))[:, -1, :]
                logits[:, 257:] = float("-inf")
                out.append(int(logits.argmax(-1)))
                seq.append(out[-1])
    return outs


@pytest.mark.parametrize("every", [1, 4])
@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize(
    "kw", [{"preset": "llama", "n_kv_head": 2}, {"position": "none"}], ids=["llama-gqa", "nope"]
)
def test_rows_of_different_prompts_see_only_their_own_tokens(kw, use_cache, every):
    """Left-padded rows see only their own tokens: within the context what they would see
    alone; past it the batch's window, which with a slide of 1 is again each row's own."""
    model = tiny(**kw)
    tok = ByteTok()
    kwargs = dict(
        max_new_tokens=30,
        temperature=0.0,
        stop_at_eot=False,
        slide_every=every,
        use_cache=use_cache,
    )
    rows = generate_rows(model, tok, ROW_PROMPTS, **kwargs)
    ids = [tok.encode(p) for p in ROW_PROMPTS]
    assert [r.tokens for r in rows] == reference_rows(model, ids, 30, every)
    for prompt, row in zip(ROW_PROMPTS, rows):
        assert row.prompt_tokens == tok.encode(prompt)
        alone = generate(model, tok, prompt, **kwargs)[0]
        assert row.tokens[:2] == alone.tokens[:2]  # 15 + 2 tokens: no slide yet
        if every == 1:
            assert row.tokens == alone.tokens


def test_padded_rows_logits_are_each_rows_own_up_to_rounding():
    """The padded batch's next-token logits against each prompt's alone, in float64: the
    padding shifts the rows' positions, which RoPE's scores do not depend on, so with its
    tables in float64 too (they are float32 buffers) only the float64 sums' order differs."""
    model = tiny("llama")
    angles = torch.outer(torch.arange(16.0), 1.0 / 10000.0 ** (torch.arange(0, 8, 2) / 8.0))
    assert torch.allclose(model.rotary.cos.double(), angles.cos(), atol=2**-24)  # the same tables
    model.rotary.cos, model.rotary.sin = angles.cos(), angles.sin()
    ids = [list(p.encode()) for p in ROW_PROMPTS]
    width = max(map(len, ids))
    seq = torch.tensor([[0] * (width - len(r)) + r for r in ids])
    cache = model.new_kv_cache(len(ids), 16)
    cache.set_padding(torch.tensor([[c < width - len(r) for c in range(width)] for r in ids]))
    with torch.no_grad():
        batch = model(seq, kv_cache=cache)[:, -1]
        for i, r in enumerate(ids):
            alone = model(torch.tensor([r]))[0, -1]
            assert torch.allclose(batch[i], alone, rtol=0, atol=1e-12 * alone.abs().max())


def test_rows_of_a_learned_position_model_decode_each_length_alone():
    model = tiny("gpt2")  # positions are absolute: padding would shift them, so no padding
    tok = ByteTok()
    kwargs = dict(max_new_tokens=6, temperature=0.0, stop_at_eot=False)
    rows = generate_rows(model, tok, ["ab", "xyz", "cd"], **kwargs)
    for prompt, row in zip(["ab", "xyz", "cd"], rows):
        assert row.tokens == generate(model, tok, prompt, **kwargs)[0].tokens


def test_rows_stop_at_their_own_token_limits():
    model = tiny("llama")
    tok = ByteTok()
    rows = generate_rows(
        model, tok, ["ab", "xyz", "q"], max_new_tokens=[2, 7, 0], temperature=0.0, stop_at_eot=False
    )
    assert [len(r.tokens) for r in rows] == [2, 7, 0]
    assert all(r.finish_reason == "length" for r in rows)
    alone = generate(model, tok, "xyz", max_new_tokens=7, temperature=0.0, stop_at_eot=False)[0]
    assert rows[1].tokens == alone.tokens
    with pytest.raises(LmlabError, match="2 limits for 3 prompts"):
        generate_rows(model, tok, ["a", "b", "c"], max_new_tokens=[1, 2])


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


def test_the_prefill_computes_the_last_positions_logits_alone():
    """The sampler's prefill asks for the last position's logits only: the head sees one
    position per row (not the whole window), and they are the full forward's last ones
    (float64: the same products, ~1e-15 apart)."""
    model = tiny("llama")
    x = torch.randint(0, 257, (3, 12), generator=torch.Generator().manual_seed(0))
    full = model(x, kv_cache=model.new_kv_cache(3))[:, -1:]
    last = model(x, kv_cache=model.new_kv_cache(3), last_only=True)
    assert last.shape == (3, 1, 257)
    torch.testing.assert_close(last, full, rtol=0, atol=1e-12)
    head_rows = []
    model.head.register_forward_hook(lambda m, inp, out: head_rows.append(inp[0].shape[1]))
    generate(model, ByteTok(), "hello world", max_new_tokens=3, temperature=0.0)
    assert head_rows == [1, 1, 1]  # the prefill's, then one per decoded token
