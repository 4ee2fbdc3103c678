"""SFT data: templates, records (and their skips), the response-only loss mask, batches."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lmlab.chat import ChatTemplate, find_template
from lmlab.config import Config, ModelConfig
from lmlab.data import sft as sd
from lmlab.errors import ConfigError, DataError
from lmlab.model import build_model

MBPP = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mbpp" / "mbpp.jsonl"


class ByteTok:
    """A byte tokenizer with an end-of-text id: enough for tokenization tests."""

    eot_id = 256
    vocab_size = 257

    def encode_ordinary(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_ordinary_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode_ordinary(t) for t in texts]

    def decode(self, ids) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", "replace")


def rec(ins: str, out: str, inp: str = "") -> sd.Record:
    return sd.Record(ins, inp, out, "mem:1")


# --- templates ---------------------------------------------------------------------------------


def test_alpaca_with_and_without_input():
    t = sd.resolve_template("")
    assert t is sd.TEMPLATES["alpaca"]
    plain = t.render("Add two numbers.")
    assert plain.startswith("Below is an instruction that describes a task. Write a response")
    assert (
        plain.endswith("### Instruction:\nAdd two numbers.\n\n### Response:\n")
        and "### Input" not in plain
    )
    full = t.render("Add two numbers.", "3 and {4}")
    assert "paired with an input" in full and "### Input:\n3 and {4}\n\n### Response:\n" in full


def test_custom_template_and_validation():
    t = sd.resolve_template("Q: {instruction}\n{input}\nA: ")
    assert t.render("hi {x}", "ctx") == "Q: hi {x}\nctx\nA: "
    assert t.render("hi") == "Q: hi\n\nA: "
    no_input = sd.resolve_template("<<{{ {instruction} }}>>")
    assert no_input.render("go", "more") == "<<{ go\n\nmore }>>"  # input joins the instruction
    for bad, match in (
        ("Q: {question}", r"sft\.template: unknown placeholder \{question\}"),
        ("Q: {instruction:>5}", "sft.template"),
        ("Q: {instruction", "sft.template"),
        ("no placeholders", "sft.template"),
    ):
        with pytest.raises(ConfigError, match=match):
            sd.resolve_template(bad)


@pytest.mark.parametrize("value", ["alpaca", "### Q\n{instruction}\n{input}\n### A\n"])
def test_chat_renders_the_training_prompt(tmp_path, value):
    """template.json (what sft writes) and the config's sft.template give chat the exact prompt."""
    t = sd.resolve_template(value)
    (tmp_path / "template.json").write_text(json.dumps(sd.template_record(t)))
    chat_t = find_template(tmp_path, Config())
    assert chat_t.render("do {this}") == t.render("do {this}")
    assert chat_t.stop == list(t.stop)
    # without template.json, chat falls back to the run config's sft.template (a name here)
    cfg = Config()
    cfg.sft.template = "alpaca"
    assert find_template(tmp_path / "a" / "b" / "c", cfg).render("x") == sd.TEMPLATES[
        "alpaca"
    ].render("x")
    assert (
        find_template(tmp_path / "a" / "b" / "c", Config()) is None
    )  # a base run: plain completion
    assert isinstance(chat_t, ChatTemplate)


# --- records -------------------------------------------------------------------------------------


def test_records_skips_name_file_and_line(tmp_path):
    f = tmp_path / "d.jsonl"
    lines = [
        json.dumps({"instruction": "a", "input": "", "output": "b"}),
        "{not json",
        json.dumps({"instruction": "a"}),
        json.dumps({"instruction": "a", "output": "   "}),
        json.dumps({"instruction": "a", "output": 3}),
        "",
        json.dumps({"instruction": "x" * 50, "output": "y"}),
        json.dumps([1, 2]),
        json.dumps({"instruction": "ok", "input": "in", "output": "fine\r\nend\n\n"}),
    ]
    f.write_text("\n".join(lines) + "\n")
    skips = sd.SkipReport()
    records = sd.read_records([str(f)], skips)
    assert [r.where for r in records] == [f"{f}:1", f"{f}:7", f"{f}:9"]
    assert records[2].output == "fine\nend" and records[2].input == "in"
    assert skips.counts == {
        "malformed_json": 1,
        "missing_field": 1,
        "empty_response": 1,
        "bad_field": 1,
        "not_an_object": 1,
    }
    assert any(n.startswith(f"{f}:2: malformed JSON") for n in skips.named)
    assert any(n.startswith(f"{f}:3: missing field(s) output") for n in skips.named)
    examples = sd.tokenize_records(
        records, ByteTok(), sd.resolve_template("{instruction}:"), 20, skips
    )
    assert len(examples) == 2 and skips.counts["too_long"] == 1
    assert any(
        n.startswith(f"{f}:7: ") and "longer than the context (20)" in n for n in skips.named
    )
    assert "skipped 6 records" in skips.summary()
    with pytest.raises(DataError, match=rf"{f}:2: malformed JSON"):
        sd.read_records([str(f)], sd.SkipReport(on_error="error"))


def test_json_array_and_missing_file(tmp_path):
    f = tmp_path / "d.json"
    f.write_text(json.dumps([{"instruction": "a", "output": "b"}, {"output": "c"}]))
    skips = sd.SkipReport()
    assert [r.where for r in sd.read_records([str(f)], skips)] == [f"{f}:[0]"]
    assert skips.counts == {"missing_field": 1}
    with pytest.raises(DataError, match="nope.jsonl"):
        sd.read_records([str(tmp_path / "nope.jsonl")], sd.SkipReport())


def test_mbpp_records_and_split(tmp_path):
    if not MBPP.is_file():
        pytest.skip(f"MBPP data not found at {MBPP} (../shared/data)")
    skips = sd.SkipReport()
    train = sd.read_records([f"{MBPP}#train"], skips)
    val = sd.read_records([f"{MBPP}#validation"], skips)
    assert (len(train), len(val), skips.total) == (374, 90, 0)
    first = json.loads(MBPP.read_text().splitlines()[600])  # task 601
    assert train[0].instruction.startswith(first["text"].strip())
    assert train[0].instruction.endswith(first["test_list"][-1])
    assert "Your code should pass these tests:" in train[0].instruction
    assert "\r" not in train[0].output and train[0].output.startswith(
        first["code"].replace("\r\n", "\n").rstrip()[:20]
    )
    no_tests = sd.read_records([f"{MBPP}#train"], skips, mbpp_tests=False)
    assert no_tests[0].instruction == first["text"].strip()
    with pytest.raises(ConfigError, match="#dev"):
        sd.read_records([f"{MBPP}#dev"], skips)


def test_split_selector_needs_task_ids(tmp_path):
    f = tmp_path / "a.jsonl"
    f.write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n")
    skips = sd.SkipReport()
    assert sd.read_records([f"{f}#train"], skips) == []
    assert skips.counts == {"no_task_id": 1}


def test_hf_source_lazy_and_clear_errors(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # not installed
    with pytest.raises(DataError, match=r"hf:org/data: .*optional package 'datasets'"):
        sd.read_records(["hf:org/data"], sd.SkipReport())

    def offline(name, split):
        raise ConnectionError("Couldn't reach the Hub")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=offline))
    with pytest.raises(
        DataError, match=r"hf:org/data: cannot load split 'train' \(ConnectionError.*offline\?"
    ):
        sd.read_records(["hf:org/data"], sd.SkipReport())
    seen = {}

    def load(name, split):
        seen["args"] = (name, split)
        return [
            {"instruction": "i", "input": "", "output": "o", "prompt": "p"},
            {"instruction": "j", "output": ""},
        ]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load))
    skips = sd.SkipReport()
    got = sd.read_records(["hf:iamtarun/python_code_instructions_18k_alpaca#test"], skips)
    assert seen["args"] == ("iamtarun/python_code_instructions_18k_alpaca", "test")
    assert [(r.instruction, r.output, r.where) for r in got] == [
        ("i", "o", "hf:iamtarun/python_code_instructions_18k_alpaca[test]:0")
    ]
    assert skips.counts == {"empty_response": 1}


# --- the loss mask ---------------------------------------------------------------------------------


def _example(ins: str, out: str) -> sd.Example:
    ex = sd.tokenize_records(
        [rec(ins, out)],
        ByteTok(),
        sd.resolve_template("Q: {instruction}\nA: "),
        200,
        sd.SkipReport(),
    )
    return ex[0]


def test_mask_layout():
    e = _example("add", "x+y")
    prompt = list(b"Q: add\nA: ")
    assert e.ids.tolist() == [256, *prompt, *b"x+y", 256] and e.n_prompt == 1 + len(prompt)
    x, y = e.xy()
    assert x.tolist() == e.ids[:-1].tolist()
    # every prompt target ignored; the response and the closing end-of-text learned
    assert y.tolist() == [-100] * len(prompt) + [*b"x+y", 256]


def _loss(model: torch.nn.Module, examples: list[sd.Example]) -> torch.Tensor:
    x, y = sd.collate([e.xy() for e in examples], pad_id=256)
    logits = model(x)
    return F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100)


def test_loss_sees_response_tokens_not_prompt_tokens():
    torch.manual_seed(0)
    # a bigram model: position i's prediction depends only on token i, so a prompt token's only
    # way into the loss would be as a target, which the mask removes
    bigram = build_model(ModelConfig(arch="bigram", vocab_size=257)).eval()
    base = [_example("make a list", "list()"), _example("sum it", "sum(xs)")]
    same_len_prompt = [_example("make a tupl", "list()"), _example("SUM it", "sum(xs)")]
    other_response = [_example("make a list", "list[]"), _example("sum it", "sum(xs)")]
    with torch.no_grad():
        l0 = _loss(bigram, base)
        assert _loss(bigram, same_len_prompt) == l0  # exactly: prompt tokens are not learned
        assert _loss(bigram, other_response) != l0
    # any model (a transformer here): the loss has zero gradient w.r.t. every prompt position's
    # prediction and a nonzero one at every response position
    tf = build_model(
        ModelConfig(n_layer=1, n_head=2, d_model=16, vocab_size=257, context_length=64)
    )
    x, y = sd.collate([e.xy() for e in base], pad_id=256)
    logits = tf(x).detach().requires_grad_(True)
    F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100).backward()
    per_pos = logits.grad.abs().sum(-1)
    assert torch.all(per_pos[y == -100] == 0) and torch.all(per_pos[y != -100] > 0)
    assert (y != -100).sum().item() == sum(len(o) + 1 for o in ("list()", "sum(xs)"))


# --- batches ---------------------------------------------------------------------------------------


def _examples(n: int, seed: int = 0) -> list[sd.Example]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        p, r = int(rng.integers(2, 9)), int(rng.integers(1, 12))
        ids = np.array([256, *rng.integers(0, 256, size=p + r), 256], dtype=np.int64)
        out.append(sd.Example(ids, 1 + p, f"mem:{i}"))
    return out


def test_loader_epochs_determinism_and_counts():
    ex = _examples(37)
    ld = sd.SftLoader(ex, global_batch=8, micro_batch=4, seed=5, pad_id=256)
    assert ld.accum_steps == 2 and ld.steps_per_epoch == 5
    # each epoch visits every example (the last batch is filled from the epoch's start)
    for epoch in (0, 1):
        seen = np.concatenate(ld.epoch_plan(epoch))
        assert len(seen) == 40 and set(seen.tolist()) == set(range(37))
    assert [b.tolist() for b in ld.epoch_plan(0)] != [b.tolist() for b in ld.epoch_plan(1)]
    for step in (0, 3, 7):
        a = ld.get(step)
        b = sd.SftLoader(ex, 8, 4, 5, pad_id=256).get(step)  # a fresh loader: same batches
        assert all(
            torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b, strict=True)
        )
        tokens, targets = ld.counts(step)
        assert targets == sum(int((y != -100).sum()) for _, y in a)
        idx = ld.epoch_plan(step // 5)[step % 5]
        assert tokens == sum(ex[i].length for i in idx)
        for x, y in a:
            assert x.shape == y.shape and x.shape[0] == 4
    ld.step = 6
    other = sd.SftLoader(ex, 8, 4, 5, pad_id=256)
    other.load_state_dict(ld.state_dict())
    assert other.step == 6
    with pytest.raises(DataError, match="seed"):
        sd.SftLoader(ex, 8, 4, 6).load_state_dict(ld.state_dict())


def test_loader_padding_is_masked_and_bucketed():
    ex = _examples(64, seed=1)
    ld = sd.SftLoader(ex, global_batch=8, micro_batch=8, seed=0, pad_id=256)
    ((x, y),) = ld.get(0)
    idx = ld.epoch_plan(0)[0]
    for row, i in enumerate(idx):
        L = ex[i].length
        ex_x, ex_y = ex[i].xy()
        assert x[row, :L].tolist() == ex_x.tolist() and y[row, :L].tolist() == ex_y.tolist()
        assert torch.all(y[row, L:] == -100) and torch.all(x[row, L:] == 256)
    # length bucketing: a batch's lengths are close together (sorted within buckets)
    spreads = [np.ptp([ex[i].length for i in b]) for b in ld.epoch_plan(0)]
    assert np.mean(spreads) < 6


def test_loader_ranks_split_the_global_batch():
    ex = _examples(30)
    whole = sd.SftLoader(ex, 8, 2, 9, pad_id=256).get(4)
    parts = [sd.SftLoader(ex, 8, 2, 9, rank=r, world=2, pad_id=256).get(4) for r in (0, 1)]
    rows = lambda batches: [tuple(r[r != -100].tolist()) for _, y in batches for r in y]  # noqa: E731
    assert rows(whole) == rows(parts[0]) + rows(parts[1])


def test_loader_replay_rows(tmp_path):
    class Split:  # a TokenSplit stand-in: one long token stream
        n_tokens = 500

        def windows(self, starts, length):
            return np.stack([np.arange(s, s + length) % 256 for s in starts])

    ex = _examples(20)
    ld = sd.SftLoader(ex, 8, 8, 1, pad_id=256, replay=Split(), replay_fraction=0.25)
    assert ld.replay_rows == 2 and ld.sft_rows == 6
    ((x, y),) = ld.get(0)
    full = (y != -100).sum(1)
    replay = [r for r in range(8) if torch.equal(y[r, : full[r]], x[r, : full[r]] + 1)]
    assert len(replay) == 2  # consecutive-token windows, every target learned
    tokens, targets = ld.counts(0)
    assert targets == int((y != -100).sum())
    with pytest.raises(ConfigError, match="sft.replay_fraction"):
        sd.SftLoader(ex, 2, 2, 1, replay=Split(), replay_fraction=0.9)


def test_val_batches_and_holdout():
    ex = _examples(25)
    train, val = sd.hold_out(ex, 0.2, seed=3)
    assert (
        len(val) == 5 and len(train) == 20 and not {e.where for e in val} & {e.where for e in train}
    )
    assert sd.hold_out(ex, 0.2, seed=3)[1][0].where == val[0].where
    batches = sd.val_batches(val, batch_size=2, pad_id=256)
    assert [b[0].shape[0] for b in batches] == [2, 2, 1]
    assert sum(int((y != -100).sum()) for _, y in batches) == sum(
        e.length - e.n_prompt + 1 for e in val
    )
    assert len(sd.val_batches(ex, 4, 256, max_batches=2)) == 2
    shares = [sd.val_batches(val, 2, 256, rank=r, world=2) for r in (0, 1)]
    assert [len(s) for s in shares] == [2, 1]
    assert sd.subset(ex, 7, 1) == sd.subset(ex, 7, 1) and len(sd.subset(ex, 7, 1)) == 7
    with pytest.raises(DataError, match="sft.val_fraction"):
        sd.hold_out(ex[:1], 0.5, 0)
