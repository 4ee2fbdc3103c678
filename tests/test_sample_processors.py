"""Logits processors, stop strings and the streaming detokenizer, on hand-made inputs."""

from __future__ import annotations

import pytest
import torch

from lmlab.errors import LmlabError
from lmlab.sample import (
    apply_repetition_penalty,
    apply_temperature,
    apply_top_k,
    apply_top_p,
    choose_next,
)
from lmlab.sample_text import StopMatcher, StreamDecoder, cut_at_stop


def kept(logits: torch.Tensor) -> set[int]:
    return {i for i, v in enumerate(logits.tolist()) if v != float("-inf")}


def test_top_k_keeps_exactly_the_k_largest():
    logits = torch.tensor([[1.0, 5.0, -2.0, 3.0, 4.0, 0.5]])
    assert kept(apply_top_k(logits, 3)[0]) == {1, 3, 4}
    assert kept(apply_top_k(logits, 1)[0]) == {1}
    assert kept(apply_top_k(logits, 0)[0]) == set(range(6))  # disabled
    assert kept(apply_top_k(logits, 99)[0]) == set(range(6))
    # kept values are unchanged
    assert apply_top_k(logits, 3)[0, 4].item() == 4.0


def test_top_k_per_row():
    logits = torch.tensor([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]])
    out = apply_top_k(logits, 2)
    assert kept(out[0]) == {1, 2} and kept(out[1]) == {0, 1}


def test_top_p_keeps_smallest_set_reaching_p():
    probs = torch.tensor([[0.05, 0.5, 0.1, 0.3, 0.05]])
    logits = probs.log()
    # sorted: 0.5 (1), 0.3 (3), 0.1 (2), 0.05, 0.05
    assert kept(apply_top_p(logits, 0.5)[0]) == {1}  # 0.5 alone reaches 0.5
    assert kept(apply_top_p(logits, 0.6)[0]) == {1, 3}
    assert kept(apply_top_p(logits, 0.79)[0]) == {1, 3}  # 0.5 + 0.3 reaches it
    assert kept(apply_top_p(logits, 0.81)[0]) == {1, 3, 2}
    four = kept(apply_top_p(logits, 0.91)[0])  # one of the two 0.05 tokens suffices
    assert len(four) == 4 and {1, 3, 2} < four
    assert kept(apply_top_p(logits, 0.96)[0]) == set(range(5))
    assert kept(apply_top_p(logits, 1.0)[0]) == set(range(5))
    assert kept(apply_top_p(logits, 0.0)[0]) == {1}  # the best token always survives


def test_top_p_order_independent_of_position():
    probs = torch.tensor([[0.1, 0.2, 0.7], [0.7, 0.2, 0.1]])
    out = apply_top_p(probs.log(), 0.75)
    assert kept(out[0]) == {2, 1} and kept(out[1]) == {0, 1}


def test_repetition_penalty_math():
    logits = torch.tensor([[2.0, -2.0, 3.0, -1.0]])
    seen = torch.tensor([[True, True, False, False]])
    out = apply_repetition_penalty(logits, seen, 2.0)
    assert out.tolist() == [[1.0, -4.0, 3.0, -1.0]]
    assert apply_repetition_penalty(logits, seen, 1.0) is logits


def test_temperature_scales_and_near_zero_is_greedy():
    logits = torch.tensor([[1.0, 3.0, 2.0]])
    out = apply_temperature(logits, 0.5)
    assert torch.allclose(out, torch.tensor([[-4.0, 0.0, -2.0]]))
    # same softmax as logits / T
    assert torch.allclose(out.softmax(-1), (logits / 0.5).softmax(-1))
    with pytest.raises(LmlabError):
        apply_temperature(logits, 0.0)
    g = torch.Generator().manual_seed(0)
    big = torch.randn(8, 50, generator=g) * 3
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        picked = choose_next(big, temperature=1e-6, generator=g)
        assert picked.tolist() == big.argmax(-1).tolist()
        assert not torch.isnan(apply_temperature(big, 1e-30)).any()


def test_sampling_respects_filters_and_seed():
    logits = torch.tensor([[0.0, 0.1, 0.2, 5.0, 4.9]]).repeat(200, 1)
    g = torch.Generator().manual_seed(1)
    picks = choose_next(logits, temperature=1.0, top_k=2, generator=g)
    assert set(picks.tolist()) == {3, 4}
    a = choose_next(logits, temperature=1.0, generator=torch.Generator().manual_seed(7))
    b = choose_next(logits, temperature=1.0, generator=torch.Generator().manual_seed(7))
    assert a.tolist() == b.tolist()


def feed_all(matcher: StopMatcher, pieces: list[str]) -> str:
    out = "".join(matcher.feed(p) for p in pieces)
    return out + matcher.finish()


def test_stop_matcher_cuts_across_pieces_and_never_leaks_stop_prefix():
    m = StopMatcher(["\n\n", "END"])
    shown = []
    for p in ["hello", " E", "N", "D more"]:
        shown.append(m.feed(p))
    assert shown == ["hello", " ", "", ""]
    assert m.stopped and "".join(shown) == "hello "
    assert m.finish() == ""


def test_stop_matcher_releases_false_alarms():
    m = StopMatcher(["END"])
    assert feed_all(m, ["a E", "Nx", "y EN"]) == "a ENxy EN"
    assert not m.stopped


def test_stop_matcher_earliest_stop_wins():
    m = StopMatcher(["cd", "b"])
    assert feed_all(m, ["abcd"]) == "a"
    assert cut_at_stop("abcd", ["cd", "b"]) == ("a", True)
    assert cut_at_stop("abcd", ["x"]) == ("abcd", False)
    with pytest.raises(LmlabError):
        StopMatcher([""])


def test_stop_matcher_overlapping_prefixes():
    m = StopMatcher(["aab"])
    assert feed_all(m, ["xa", "a", "a", "b!"]) == "xa"
    assert m.stopped


class ByteTok:
    """Ids are byte values; 256 is a special token with text <|x|>."""

    def decode_bytes(self, ids):
        return b"".join(b"<|x|>" if i == 256 else bytes([i]) for i in ids)


def test_stream_decoder_emits_only_complete_utf8():
    text = "a€😀b"
    ids = list(text.encode("utf-8")) + [256]
    d = StreamDecoder(ByteTok())
    outs = [d.push(i) for i in ids]
    assert outs[0] == "a"
    assert outs[1:3] == ["", ""] and outs[3] == "€"
    assert outs[4:7] == ["", "", ""] and outs[7] == "😀"
    assert "".join(outs) + d.flush() == text + "<|x|>"


def test_stream_decoder_flush_replaces_truncated_char():
    d = StreamDecoder(ByteTok())
    ids = list("é".encode())[:1]
    assert d.push(ids[0]) == ""
    assert d.flush() == "\ufffd"
    assert d.flush() == ""
    assert bytes(ids).decode("utf-8", errors="replace") == "\ufffd"
