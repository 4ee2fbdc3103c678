"""`lmlab chat RUN`: an interactive loop over :func:`lmlab.sample.generate`.

Instruction-tuned runs format each user turn with the run's prompt template and end the
model's reply at end-of-text (or at the template's stop strings); base runs do plain
completion: each line you type is added to the transcript as a line of text and the model
writes what follows, up to a blank line (a paragraph, a function body) or the token limit.
A base model was never taught to answer, so its reply continues the text rather than
responding to it; ``lmlab sft`` makes an instruction-following run. Commands:
``/reset`` forgets the conversation, ``/temp T`` sets the temperature (0 is greedy),
``/quit`` (or end of input) leaves.

The loop itself, :func:`chat_session`, reads and writes plain text streams, so it runs and is
tested without a terminal.

Where the template comes from (first found): a ``template.json`` file in the checkpoint or
run folder (``{"prompt": "...{prompt}...", "stop": [...]}``, written by ``lmlab sft``), or the
run config's ``sft.template`` (a named template or a format string, read by
:func:`lmlab.data.sft.resolve_template`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch

from lmlab.config import SampleConfig
from lmlab.data.sft import resolve_template
from lmlab.device import inference_device
from lmlab.errors import LmlabError
from lmlab.io import read_json
from lmlab.runs import load_model_for_inference, resolve_checkpoint
from lmlab.sample import generate

HELP = "commands: /reset (forget the conversation), /temp T (temperature, 0 = greedy), /quit"
# A base model's reply ends at a blank line: stopping at the first newline (as this once did)
# left an empty reply whenever the model began its continuation on a new line.
BASE_STOP = "\n\n"
BASE_MODE = (
    "plain completion (base run, not fine-tuned): the model continues what you type, "
    "up to a blank line; `lmlab sft` makes a run that follows instructions"
)


@dataclass
class ChatTemplate:
    """How one user turn is written for an instruction-tuned model."""

    prompt: str  # contains "{prompt}", e.g. "### Instruction:\n{prompt}\n\n### Response:\n"
    stop: list[str] = field(default_factory=list)  # strings that end a reply besides eot

    def render(self, message: str) -> str:
        # str.replace, not str.format: user text may contain braces.
        return self.prompt.replace("{prompt}", message).replace("{instruction}", message)


def _template_from(value: Any, where: str) -> ChatTemplate | None:
    if isinstance(value, ChatTemplate):
        return value
    if isinstance(value, dict) and isinstance(value.get("prompt"), str):
        return ChatTemplate(value["prompt"], [str(s) for s in value.get("stop", []) if s])
    if isinstance(value, str) and value:
        # The SFT module owns the template language (named templates, {instruction}, {input},
        # {{ }} escapes); chat uses its no-input prompt, exactly as template.json records it.
        t = resolve_template(value)
        return ChatTemplate(t.chat_prompt(), [str(s) for s in t.stop if s])
    return None


def find_template(run: str | Path, cfg: Any) -> ChatTemplate | None:
    """The run's prompt template, or None for a base (plain completion) run."""
    run = Path(run)
    for folder in (run, run.parent, run.parent.parent):
        f = folder / "template.json"
        if f.is_file():
            t = _template_from(read_json(f), str(f))
            if t is None:
                raise LmlabError(f'{f}: expected {{"prompt": "...{{prompt}}...", "stop": [...]}}')
            return t
    sft = getattr(cfg, "sft", None)
    if sft is not None:
        value = sft.get("template") if isinstance(sft, dict) else getattr(sft, "template", None)
        return _template_from(value, "config sft.template")
    return None


class Conversation:
    """The transcript as token ids, trimmed from the oldest turn to fit the context."""

    def __init__(self, tokenizer: Any, template: ChatTemplate | None) -> None:
        self.tok = tokenizer
        self.template = template
        self.turns: list[list[int]] = []  # each: user turn + reply (+ eot) ids

    def reset(self) -> None:
        self.turns = []

    def prompt_ids(self, message: str, budget: int | None) -> tuple[list[int], list[int]]:
        """(history + new user turn, new user turn), dropping whole old turns to fit ``budget``."""
        text = self.template.render(message) if self.template else message + "\n"
        if self.template is None and self.turns and not self._ends_line():
            text = "\n" + text
        encode = getattr(self.tok, "encode_ordinary", self.tok.encode)  # as SFT encodes prompts
        new = encode(text)
        eot = getattr(self.tok, "eot_id", None)
        boundary = [eot] if self.template is not None and eot is not None else []
        while budget is not None and self.turns and sum(map(len, self.turns)) + len(new) > budget:
            self.turns.pop(0)
        if not self.turns:
            new = boundary + new  # SFT examples start after a document boundary
        return [t for turn in self.turns for t in turn] + new, new

    def _ends_line(self) -> bool:
        last = self.turns[-1] if self.turns else []
        return bool(last) and self.tok.decode(last[-1:]).endswith("\n")

    def add(self, new_ids: list[int], reply: str) -> None:
        """Record a finished exchange; an instruction reply is closed with end-of-text."""
        encode = getattr(self.tok, "encode_ordinary", self.tok.encode)
        turn = new_ids + encode(reply)
        eot = getattr(self.tok, "eot_id", None)
        if self.template is not None and eot is not None:
            turn.append(eot)
        self.turns.append(turn)


def _run_command(command: str, conv: Conversation, temperature: float, out: TextIO) -> float | None:
    """One ``/command`` line: None for /quit, else the temperature from now on."""
    name, _, arg = command.partition(" ")
    if name == "/quit":
        return None
    if name == "/reset":
        conv.reset()
        out.write("(conversation reset)\n")
    elif name == "/temp":
        try:
            value = float(arg)
        except ValueError:
            value = -1.0
        if not value >= 0:
            out.write(f"(/temp needs a number >= 0, got {arg!r})\n")
        else:
            temperature = value
            out.write(f"(temperature {temperature:g})\n")
    else:
        out.write(f"(unknown command {name}; {HELP})\n")
    return temperature


def _end_reply(sample: Any, out: TextIO) -> None:
    """After the streamed reply: a newline, the sampler's note, and a hint for an empty reply."""
    out.write("\n")
    if sample.message:
        out.write(f"({sample.message})\n")
    if not sample.text.strip():
        out.write("(empty reply: the model ended its text at once; try /temp 1 or more context)\n")


def chat_session(
    model: torch.nn.Module,
    tokenizer: Any,
    template: ChatTemplate | None,
    inp: TextIO,
    out: TextIO,
    *,
    temperature: float = SampleConfig.temperature,
    max_new_tokens: int = SampleConfig.max_new_tokens,
    top_p: float = 0.95,  # chat's own: it has no flag, and trims the unlikely tail of a reply
    seed: int = 0,
    stop: Sequence[str] = (),
    interactive: bool = False,
) -> list[tuple[str, str]]:
    """Run the chat loop over text streams; returns the (user, reply) pairs exchanged."""
    if temperature < 0:
        raise LmlabError(f"temperature: must be >= 0, got {temperature}")
    conv = Conversation(tokenizer, template)
    ctx = int(getattr(getattr(model, "config", None), "context_length", 0) or 0) or None
    budget = max(1, ctx - max_new_tokens) if ctx else None
    stops = list(stop) + (template.stop if template else [])
    if template is None:
        stops.append(BASE_STOP)
    mode = "instruction template" if template else BASE_MODE
    out.write(f"lmlab chat: {mode}. {HELP}\n")
    exchanged: list[tuple[str, str]] = []
    turn = 0
    while True:
        if interactive:
            out.write("> ")
            out.flush()
        line = inp.readline()
        if not line:
            break
        message = line.rstrip("\n")
        command = message.strip()
        if command.startswith("/"):
            new_temperature = _run_command(command, conv, temperature, out)
            if new_temperature is None:
                break
            temperature = new_temperature
            continue
        if not command:
            continue
        ids, new_ids = conv.prompt_ids(message, budget)
        try:
            sample = generate(
                model,
                tokenizer,
                ids,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                stop=stops,
                seed=seed + turn,
                stream_callback=lambda _i, text: (out.write(text), out.flush()),
            )[0]
        except LmlabError as e:  # e.g. a message longer than a learned-position context
            out.write(f"(error: {e})\n")
            continue
        _end_reply(sample, out)
        conv.add(new_ids, sample.text)
        exchanged.append((message, sample.text))
        turn += 1
    return exchanged


def chat_loop(
    run: str | Path,
    temperature: float = SampleConfig.temperature,
    max_new_tokens: int = SampleConfig.max_new_tokens,
) -> None:
    """`lmlab chat RUN`: load the run and talk on stdin/stdout."""
    model, cfg, tokenizer = load_model_for_inference(run, device=inference_device(), decode_batch=1)
    template = find_template(resolve_checkpoint(run), cfg)
    chat_session(
        model,
        tokenizer,
        template,
        sys.stdin,
        sys.stdout,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        interactive=sys.stdin.isatty(),
    )
