"""The text side of sampling: tokens to streamed UTF-8 text, stop strings, and each row's output
(its text, tokens and why it ended) as :mod:`lmlab.sample` decodes a batch."""

from __future__ import annotations

import codecs
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from lmlab.errors import LmlabError

StreamCallback = Callable[[int, str], None]
# stop_when(i, text): asked with sample i's whole text so far each time it grows; True ends it.
StopWhen = Callable[[int, str], bool]


@dataclass
class Sample:
    """One generated continuation."""

    text: str  # generated text after the prompt, cut before the first stop string
    tokens: list[int]  # generated ids (without a final eot; up to the token completing a stop)
    prompt_tokens: list[int]
    finish_reason: str  # "length" | "stop" | "eot" | "context"
    message: str = ""  # why generation ended early, when it is not obvious (context)


class StreamDecoder:
    """Turns token ids into text one token at a time, emitting only complete UTF-8 characters.

    A character split across tokens (byte-level BPE splits emoji and CJK) is held until its
    last byte arrives; :meth:`flush` ends the stream, turning leftover bytes into U+FFFD, the
    same as ``tokenizer.decode`` on the whole sequence.
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._bytes: dict[int, bytes] = {}

    def _token_bytes(self, token: int) -> bytes:
        b = self._bytes.get(token)
        if b is None:
            b = self._tok.decode_bytes([token])
            self._bytes[token] = b
        return b

    def push(self, token: int) -> str:
        return self._dec.decode(self._token_bytes(int(token)))

    def flush(self) -> str:
        return self._dec.decode(b"", final=True)


class StopMatcher:
    """Finds stop strings in streamed text without ever emitting a stop string's first part.

    :meth:`feed` returns the text that is safe to show: everything except a tail that could
    still grow into a stop string. Once a stop string appears, ``stopped`` is set and the text
    before it is the last thing returned.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        for s in stops:
            if not s:
                raise LmlabError("stop: empty stop string")
        self.stops = list(stops)
        self._held = ""
        self.stopped = False

    def _held_tail(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
        best = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:n]):
                    best = n
                    break
        return best

    def feed(self, piece: str) -> str:
        if self.stopped:
            return ""
        text = self._held + piece
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            self._held = ""
            return text[: min(hits)]
        keep = self._held_tail(text)
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def finish(self) -> str:
        """End of stream: what was held back was not a stop string after all."""
        out, self._held = self._held, ""
        return "" if self.stopped else out


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the earliest stop string, and whether one was found."""
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)


class RowOutputs:
    """Each row's text as it becomes final: decoding, stop strings, finish reasons, token limits."""

    def __init__(
        self,
        tokenizer: Any,
        stop: list[str],
        batch: int,
        callback: StreamCallback | None,
        stop_when: StopWhen | None = None,
        limits: Sequence[int] | None = None,
    ) -> None:
        self.limits = list(limits) if limits is not None else None  # each row's token limit
        self.decoders = [StreamDecoder(tokenizer) for _ in range(batch)]
        self.matchers = [StopMatcher(stop) for _ in range(batch)]
        self.pieces: list[list[str]] = [[] for _ in range(batch)]
        self.tokens: list[list[int]] = [[] for _ in range(batch)]
        self.finish = ["length"] * batch
        self.done = [lim < 1 for lim in self.limits] if self.limits else [False] * batch
        self.message = ""
        self.callback = callback
        self.stop_when = stop_when

    def emit(self, i: int, text: str) -> None:
        if text:
            self.pieces[i].append(text)
            if self.callback is not None:
                self.callback(i, text)
            # asked until the row ends otherwise (at its token limit too: the flush's text)
            if self.stop_when is not None and self.finish[i] == "length":
                if self.stop_when(i, "".join(self.pieces[i])):
                    self.done[i], self.finish[i] = True, "stop"

    def take(self, nxt: list[int], eot: int | None) -> None:
        """Append one chosen token to each sample still running."""
        for i, t in enumerate(nxt):
            if self.done[i]:
                continue
            if eot is not None and t == eot:
                self.done[i], self.finish[i] = True, "eot"
                continue
            self.tokens[i].append(t)
            self.emit(i, self.matchers[i].feed(self.decoders[i].push(t)))
            if self.matchers[i].stopped:
                self.done[i], self.finish[i] = True, "stop"
            elif self.limits and len(self.tokens[i]) >= self.limits[i]:
                self.done[i] = True  # finish stays "length"

    def stop_at_context(self, ctx: int | None) -> None:
        self.message = (
            f"stopped at the context length {ctx}: this model has learned positions, "
            "which cannot slide past it"
        )
        for i in range(len(self.done)):
            if not self.done[i]:
                self.done[i], self.finish[i] = True, "context"

    def samples(self, prompt_ids: Sequence[list[int]]) -> list[Sample]:
        """Flush what each decoder and matcher still holds and build the samples (row i's
        prompt ``prompt_ids[i]``)."""
        samples = []
        for i in range(len(self.done)):
            if self.finish[i] != "stop":
                self.emit(i, self.matchers[i].feed(self.decoders[i].flush()))
                self.emit(i, self.matchers[i].finish())
                if self.matchers[i].stopped:
                    self.finish[i] = "stop"
            samples.append(
                Sample(
                    text="".join(self.pieces[i]),
                    tokens=self.tokens[i],
                    prompt_tokens=list(prompt_ids[i]),
                    finish_reason=self.finish[i],
                    message=self.message if self.finish[i] == "context" else "",
                )
            )
        return samples
