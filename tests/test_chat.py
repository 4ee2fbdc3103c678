"""The chat loop over text streams (no terminal): commands, history, templates."""

from __future__ import annotations

import dataclasses
import io
import json
import types

import pytest
import torch

from lmlab.chat import ChatTemplate, Conversation, chat_loop, chat_session, find_template
from lmlab.config import Config, ModelConfig
from lmlab.errors import LmlabError
from lmlab.model import build_model
from lmlab.model.presets import PRESETS
from lmlab.sample import generate

CORPUS = "hello there, how are you?\nI am fine, thank you.\n### Instruction:\n### Response:\n" * 20
TEMPLATE = "### Instruction:\n{prompt}\n\n### Response:\n"


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from lmlab.tokenizer import train_tokenizer

    d = tmp_path_factory.mktemp("tok")
    (d / "c.txt").write_text(CORPUS, encoding="utf-8")
    return train_tokenizer(
        [str(d / "c.txt")], vocab_size=300, out=d / "tok", special_tokens=["<|endoftext|>"]
    )


@pytest.fixture(scope="module")
def model(tok):
    cfg = dataclasses.replace(
        ModelConfig(vocab_size=tok.vocab_size, n_layer=2, n_head=2, d_model=32, context_length=64),
        **PRESETS["llama"],
    )
    torch.manual_seed(0)
    m = build_model(cfg)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "norm" not in name:
                p.normal_(0, 0.3)
    return m.eval()


def run_chat(model, tok, text, template=None, **kw):
    out = io.StringIO()
    pairs = chat_session(model, tok, template, io.StringIO(text), out, max_new_tokens=8, **kw)
    return pairs, out.getvalue()


def test_plain_completion_uses_history_and_commands(model, tok):
    pairs, shown = run_chat(
        model, tok, "hello\n/temp 0\nhow are\n/quit\nnever read\n", temperature=0.9
    )
    assert [u for u, _ in pairs] == ["hello", "how are"]
    assert "(temperature 0)" in shown and "plain completion" in shown
    assert pairs[0][1] in shown and pairs[1][1] in shown
    # the second turn was greedy, continuing "hello\n<reply>\nhow are\n", cut at a blank line
    sep = "" if pairs[0][1].endswith("\n") else "\n"
    history = tok.encode("hello\n") + tok.encode(pairs[0][1]) + tok.encode(sep + "how are\n")
    expect = generate(
        model, tok, history, max_new_tokens=8, temperature=0.0, top_p=0.95, stop=["\n\n"]
    )[0]
    assert pairs[1][1] == expect.text and "\n\n" not in expect.text


def test_bad_commands_are_explained_not_fatal(model, tok):
    pairs, shown = run_chat(model, tok, "/temp hot\n/temp -1\n/bogus\n\nhi\n")
    assert "/temp needs a number" in shown and "unknown command /bogus" in shown
    assert [u for u, _ in pairs] == ["hi"]
    with pytest.raises(LmlabError, match="temperature"):
        run_chat(model, tok, "hi\n", temperature=-1.0)


def test_reset_forgets_history(model, tok):
    conv = Conversation(tok, None)
    ids, new = conv.prompt_ids("hello", None)
    conv.add(new, "there")
    ids2, new2 = conv.prompt_ids("how", None)
    assert ids2 == tok.encode("hello\n") + tok.encode("there") + tok.encode("\nhow\n")
    conv.reset()
    assert conv.prompt_ids("how", None)[0] == tok.encode("how\n")
    _, shown = run_chat(model, tok, "hello\n/reset\nhello\n", temperature=0.0)
    assert "(conversation reset)" in shown


def test_template_turns_and_trimming(model, tok):
    t = ChatTemplate(TEMPLATE, stop=["### Instruction"])
    conv = Conversation(tok, t)
    ids, new = conv.prompt_ids("hi {x}", None)
    assert ids == [tok.eot_id] + tok.encode("### Instruction:\nhi {x}\n\n### Response:\n")
    conv.add(new, "fine")
    assert conv.turns[0][-1] == tok.eot_id  # a reply closes with end-of-text
    ids2, new2 = conv.prompt_ids("again", None)
    assert ids2[: len(conv.turns[0])] == conv.turns[0]
    # a small budget drops the oldest turn whole
    ids3, _ = conv.prompt_ids("again", len(new2) + 1)
    assert ids3 == [tok.eot_id] + new2  # alone again: starts after a document boundary
    pairs, shown = run_chat(model, tok, "say hi\nmore\n", template=t, temperature=0.0)
    assert "instruction template" in shown and len(pairs) == 2
    assert all("### Instruction" not in r for _, r in pairs)


def test_find_template_sources(tmp_path):
    assert find_template(tmp_path, Config()) is None
    cfg = types.SimpleNamespace(
        sft=types.SimpleNamespace(template="Q: {instruction}{input} {{ok}}\nA:")
    )
    assert find_template(tmp_path, cfg).render("x") == "Q: x {ok}\nA:"
    cfg.sft.template = "alpaca"
    assert find_template(tmp_path, cfg).stop == ["### Instruction:"]
    (tmp_path / "template.json").write_text(
        json.dumps({"prompt": "U: {prompt}\nB:", "stop": ["U:"]})
    )
    t = find_template(tmp_path, Config())
    assert t.render("y") == "U: y\nB:" and t.stop == ["U:"]
    (tmp_path / "template.json").write_text(json.dumps({"nope": 1}))
    with pytest.raises(LmlabError, match="template.json"):
        find_template(tmp_path, Config())


def test_chat_loop_on_a_run_folder(tmp_path, model, tok, monkeypatch, capsys):
    from lmlab.train.checkpoint import save_checkpoint

    run = tmp_path / "run"
    tok.save(run / "tokenizer")
    save_checkpoint(run / "checkpoints", 1, model, None, None, {}, Config(model=model.config))
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\n/quit\n"))
    chat_loop(run, temperature=0.0, max_new_tokens=5)
    shown = capsys.readouterr().out
    assert "plain completion" in shown and shown.count("\n") >= 2


def test_too_long_message_is_reported_and_chat_goes_on(tok):
    cfg = dataclasses.replace(
        ModelConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, d_model=16, context_length=16),
        **PRESETS["gpt2"],
    )
    m = build_model(cfg).eval()
    pairs, shown = run_chat(m, tok, "hello there " * 20 + "\nhi\n", temperature=0.0)
    assert "(error: prompt:" in shown and "learned positions" in shown
    assert [u for u, _ in pairs] == ["hi"]


class NewlineFirst(torch.nn.Module):
    """A stand-in base model that starts every continuation on a new line, then writes 'ok'."""

    def __init__(self, tok):
        super().__init__()
        self.config = types.SimpleNamespace(context_length=64, position="rope")
        self.tok = tok
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, idx, kv_cache=None, targets=None):
        plan = self.tok.encode("\nok then\n\nmore")
        text = self.tok.decode(idx[0].tolist())
        done = len(text) - text.rfind("hi\n") - 3 if "hi\n" in text else 0
        n = len(self.tok.encode(text[len(text) - done :])) if done else 0
        logits = torch.full((idx.shape[0], idx.shape[1], self.tok.vocab_size), -1e9)
        logits[:, -1, plan[min(n, len(plan) - 1)]] = 0.0
        return logits


def test_base_reply_starting_on_a_new_line_is_not_empty(tok):
    """A base model's continuation often begins with a newline; the reply runs to a blank line."""
    model = NewlineFirst(tok)
    out = io.StringIO()
    pairs = chat_session(
        model, tok, None, io.StringIO("hi\n"), out, max_new_tokens=12, temperature=0.0
    )
    assert pairs[0][1].strip() == "ok then"
    shown = out.getvalue()
    assert (
        "continues what you type" in shown and "lmlab sft" in shown and "empty reply" not in shown
    )
