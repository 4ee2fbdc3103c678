"""Text generation: KV-cached decoding with greedy, temperature, top-k, top-p, a repetition
penalty, stop strings, a token limit, streaming and seeded reproducibility.

The engine prefills the prompt once (all samples share it, one batch row each), then feeds one
token per step through the model's KV cache. Past the context length:

- RoPE and no-position models slide the window: the cache is dropped and the last
  ``context_length`` tokens are prefilled again, so every step sees exactly what an uncached
  model cropped to its last ``context_length`` tokens sees (cached == uncached, always).
  With ``slide_every = k`` the window moves k tokens at a time instead of one: a step sees
  the last ctx - k + 1 to ctx tokens, and past the context one prefill serves k tokens
  instead of one (the rest come from the cache), about k times less work per token there.
- learned-position models stop with ``finish_reason="context"`` and a message saying why,
  because their position table has no row past ``context_length - 1``.

Loading a run never runs code (safetensors weights; see ``lmlab.train.checkpoint``).
"""

from __future__ import annotations

import codecs
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from lmlab.config import SampleConfig
from lmlab.device import inference_device
from lmlab.errors import LmlabError
from lmlab.runs import load_model_for_inference

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


# --- logits processors (each takes and returns float logits of shape (B, V)) -----------------


def apply_repetition_penalty(
    logits: torch.Tensor, seen: torch.Tensor, penalty: float
) -> torch.Tensor:
    """CTRL-style penalty on tokens already seen (prompt and generated).

    A seen token's logit is divided by ``penalty`` when positive and multiplied by it when
    negative, so ``penalty > 1`` always makes it less likely. ``seen`` is a (B, V) bool mask.
    """
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Divide by the temperature after subtracting the row max, so a tiny temperature gives
    0 for the best token and large negatives (never inf - inf = nan) for the rest."""
    if temperature <= 0:
        raise LmlabError(
            f"temperature: must be > 0 for sampling, got {temperature} (0 means greedy)"
        )
    shifted = logits - logits.max(dim=-1, keepdim=True).values
    return shifted / temperature


def apply_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` highest logits per row (ties with the k-th are kept too); 0 disables."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def apply_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter: keep the smallest set of most likely tokens whose mass reaches ``p``.

    A token is dropped when the mass of the tokens strictly more likely than it already
    reaches ``p``; the most likely token is always kept. ``p >= 1`` disables.
    """
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # mass of the tokens ranked above each one
    drop_sorted = mass_before >= p
    drop_sorted[..., 0] = False
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def choose_next(
    logits: torch.Tensor,
    *,
    temperature: float,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick one token per row from (B, V) logits: argmax at temperature 0, else sample."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = apply_top_p(apply_top_k(apply_temperature(logits, temperature), top_k), top_p)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


# --- text plumbing -------------------------------------------------------------------------


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


# --- the model side ------------------------------------------------------------------------


class ContextFull(Exception):
    """Internal: a learned-position model has no room for another token."""


def _model_config(model: torch.nn.Module) -> Any:
    return getattr(model, "config", None)


def _can_slide(model: torch.nn.Module) -> bool:
    cfg = _model_config(model)
    return getattr(cfg, "position", "none") != "learned"


def _context_length(model: torch.nn.Module) -> int | None:
    cfg = _model_config(model)
    n = getattr(cfg, "context_length", 0)
    return int(n) if n else None


def _supports_cache(model: torch.nn.Module) -> bool:
    return bool(getattr(model, "supports_kv_cache", False))


class _Stepper:
    """Produces next-token logits for a growing (B, L) sequence, with or without a KV cache.

    Both paths give identical logits (up to float noise): each step sees the last
    ``context_length`` tokens, positions counted from the start of that window.
    """

    def __init__(
        self, model: torch.nn.Module, batch_size: int, use_cache: bool, slide_every: int = 1
    ) -> None:
        self.model = model
        self.ctx = _context_length(model)
        self.slide = _can_slide(model)
        self.use_cache = use_cache and _supports_cache(model)
        self.batch_size = batch_size
        self.slide_every = max(1, min(slide_every, self.ctx or 1))
        self.cache: Any = None

    def _window(self, seq: torch.Tensor) -> torch.Tensor:
        """The tokens a step sees: all of ``seq``, or past ``ctx`` the window's start moved on
        by whole multiples of ``slide_every`` (the same for the cached path, which prefills
        exactly when the start moves)."""
        if self.ctx is None or seq.shape[1] <= self.ctx:
            return seq
        if not self.slide:
            raise ContextFull
        over, k = seq.shape[1] - self.ctx, self.slide_every
        return seq[:, -(-over // k) * k :]

    def _prefill(self, seq: torch.Tensor) -> torch.Tensor:
        window = self._window(seq)
        if not self.use_cache:
            return self.model(window)[:, -1, :]
        if self.cache is None:
            self.cache = self.model.new_kv_cache(self.batch_size, self.ctx)
        self.cache.reset()
        return self.model(window, kv_cache=self.cache)[:, -1, :]

    def first(self, seq: torch.Tensor) -> torch.Tensor:
        return self._prefill(seq).float()

    def next(self, seq: torch.Tensor) -> torch.Tensor:
        """Logits after ``seq`` whose last column is the token just chosen."""
        if not self.use_cache:
            return self._prefill(seq).float()
        if self.cache.pos + 1 > self.cache.max_len:
            # Full: re-prefill the last ctx tokens (raises ContextFull for learned positions).
            return self._prefill(seq).float()
        return self.model(seq[:, -1:], kv_cache=self.cache)[:, -1, :].float()


# --- generate ------------------------------------------------------------------------------


def _check_args(
    max_new_tokens: int,
    temperature: float,
    top_k: int,
    top_p: float,
    repetition_penalty: float,
    num_samples: int,
) -> None:
    if max_new_tokens < 0:
        raise LmlabError(f"max_new_tokens: must be >= 0, got {max_new_tokens}")
    if not temperature >= 0:
        raise LmlabError(f"temperature: must be >= 0, got {temperature}")
    if top_k < 0:
        raise LmlabError(f"top_k: must be >= 0 (0 disables), got {top_k}")
    if not 0.0 <= top_p <= 1.0:
        raise LmlabError(f"top_p: must be in [0, 1], got {top_p}")
    if not repetition_penalty > 0:
        raise LmlabError(f"repetition_penalty: must be > 0 (1 disables), got {repetition_penalty}")
    if num_samples < 1:
        raise LmlabError(f"num_samples: must be >= 1, got {num_samples}")


def encode_prompt(tokenizer: Any, prompt: str | Sequence[int]) -> list[int]:
    """Prompt ids; an empty prompt starts from the end-of-text token."""
    ids = tokenizer.encode(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]
    if not ids:
        eot = getattr(tokenizer, "eot_id", None)
        if eot is None:
            raise LmlabError(
                "prompt: empty, and the tokenizer has no <|endoftext|> token to start from"
            )
        ids = [eot]
    return ids


def _check_prompt(model: torch.nn.Module, prompt_ids: list[int], vocab: int) -> None:
    """Refuse a prompt the model cannot read: an id past its vocabulary, or more tokens than a
    learned-position model's context."""
    if vocab and max(prompt_ids) >= vocab:
        raise LmlabError(
            f"prompt: token id {max(prompt_ids)} is outside the model's vocabulary ({vocab})"
        )
    ctx = _context_length(model)
    if ctx is not None and not _can_slide(model) and len(prompt_ids) > ctx:
        raise LmlabError(
            f"prompt: {len(prompt_ids)} tokens exceed the context length {ctx} of a model with "
            "learned positions (it cannot slide its window); shorten the prompt"
        )


class _Outputs:
    """Each sample's text as it becomes final: decoding, stop strings, finish reasons."""

    def __init__(
        self,
        tokenizer: Any,
        stop: list[str],
        batch: int,
        callback: StreamCallback | None,
        stop_when: StopWhen | None = None,
    ) -> None:
        self.decoders = [StreamDecoder(tokenizer) for _ in range(batch)]
        self.matchers = [StopMatcher(stop) for _ in range(batch)]
        self.pieces: list[list[str]] = [[] for _ in range(batch)]
        self.tokens: list[list[int]] = [[] for _ in range(batch)]
        self.finish = ["length"] * batch
        self.done = [False] * batch
        self.message = ""
        self.callback = callback
        self.stop_when = stop_when

    def emit(self, i: int, text: str) -> None:
        if text:
            self.pieces[i].append(text)
            if self.callback is not None:
                self.callback(i, text)
            if self.stop_when is not None and not self.done[i]:
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

    def stop_at_context(self, ctx: int | None) -> None:
        self.message = (
            f"stopped at the context length {ctx}: this model has learned positions, "
            "which cannot slide past it"
        )
        for i in range(len(self.done)):
            if not self.done[i]:
                self.done[i], self.finish[i] = True, "context"

    def samples(self, prompt_ids: list[int]) -> list[Sample]:
        """Flush what each decoder and matcher still holds and build the samples."""
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
                    prompt_tokens=list(prompt_ids),
                    finish_reason=self.finish[i],
                    message=self.message if self.finish[i] == "context" else "",
                )
            )
        return samples


def _decode_loop(
    model: torch.nn.Module,
    seq: torch.Tensor,
    out: _Outputs,
    *,
    max_new_tokens: int,
    choose: Callable[[torch.Tensor], torch.Tensor],
    seen: torch.Tensor | None,
    repetition_penalty: float,
    tok_vocab: int,
    eot: int | None,
    use_cache: bool,
    slide_every: int = 1,
) -> None:
    """Run the model step by step, feeding each chosen token to ``out``, until every sample is
    done, the token limit, or (learned positions) the context length."""
    B = seq.shape[0]
    stepper = _Stepper(model, B, use_cache, slide_every)
    logits = stepper.first(seq) if max_new_tokens > 0 else None
    for step in range(max_new_tokens):
        assert logits is not None
        if tok_vocab and logits.shape[-1] > tok_vocab:
            # Padded embedding rows have no text: never pick them.
            logits[:, tok_vocab:] = float("-inf")
        if seen is not None:
            logits = apply_repetition_penalty(logits, seen, repetition_penalty)
        nxt = choose(logits)
        if seen is not None:
            seen[torch.arange(B, device=seq.device), nxt] = True
        out.take(nxt.tolist(), eot)
        if all(out.done) or step == max_new_tokens - 1:
            break
        seq = torch.cat([seq, nxt[:, None]], dim=1)
        try:
            logits = stepper.next(seq)
        except ContextFull:
            out.stop_at_context(_context_length(model))
            break


def generate(
    model: torch.nn.Module,
    tokenizer: Any,
    prompt: str | Sequence[int] = "",
    *,
    max_new_tokens: int = SampleConfig.max_new_tokens,
    temperature: float = SampleConfig.temperature,
    top_k: int = SampleConfig.top_k,
    top_p: float = SampleConfig.top_p,
    repetition_penalty: float = SampleConfig.repetition_penalty,
    stop: Sequence[str] = (),
    num_samples: int = SampleConfig.num_samples,
    seed: int = SampleConfig.seed,
    stream_callback: StreamCallback | None = None,
    use_cache: bool = True,
    stop_at_eot: bool = True,
    stop_when: StopWhen | None = None,
    slide_every: int = 1,
) -> list[Sample]:
    """Generate ``num_samples`` continuations of ``prompt`` in one batch.

    ``temperature=0`` is greedy. The same ``seed`` (and arguments) gives the same samples.
    ``stream_callback(i, text)`` receives sample ``i``'s text as it becomes final: complete
    UTF-8 characters, never part of a stop string. ``stop_when(i, text)``, asked with sample
    ``i``'s whole text each time it grows, ends that sample (``finish_reason="stop"``) when it
    says True: for an end no stop string can name (a function's body ended). Every row still
    draws a token each step until all are done, so stopping one changes no other sample.
    ``slide_every`` (RoPE and no-position models, past the context length): how many tokens
    the window moves at a time (the module's docstring).
    """
    _check_args(max_new_tokens, temperature, top_k, top_p, repetition_penalty, num_samples)
    if slide_every < 1:
        raise LmlabError(f"slide_every: must be >= 1, got {slide_every}")
    prompt_ids = encode_prompt(tokenizer, prompt)
    device = next(model.parameters()).device
    vocab = int(getattr(_model_config(model), "vocab_size", 0) or 0)
    tok_vocab = int(getattr(tokenizer, "vocab_size", 0) or 0)
    _check_prompt(model, prompt_ids, vocab)
    eot = getattr(tokenizer, "eot_id", None) if stop_at_eot else None

    B = num_samples
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    seq = torch.tensor([prompt_ids] * B, dtype=torch.long, device=device)  # (B, L)
    seen: torch.Tensor | None = None
    if repetition_penalty != 1.0:
        seen = torch.zeros(B, vocab or tok_vocab, dtype=torch.bool, device=device)
        seen[:, torch.tensor(prompt_ids, device=device)] = True

    def choose(logits: torch.Tensor) -> torch.Tensor:
        return choose_next(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=gen)

    out = _Outputs(tokenizer, list(stop), B, stream_callback, stop_when)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            _decode_loop(
                model,
                seq,
                out,
                max_new_tokens=max_new_tokens,
                choose=choose,
                seen=seen,
                repetition_penalty=repetition_penalty,
                tok_vocab=tok_vocab,
                eot=eot,
                use_cache=use_cache,
                slide_every=slide_every,
            )
    finally:
        model.train(was_training)
    return out.samples(prompt_ids)


# --- command line --------------------------------------------------------------------------


def sample_command(
    run: str,
    prompt: str,
    *,
    max_new_tokens: int,
    temperature: float,
    top_k: int,
    top_p: float,
    repetition_penalty: float,
    stop: list[str] | None,
    num_samples: int,
    seed: int | None,
    stream: bool = True,
    as_json: bool = False,
    out: Any = None,
    err: Any = None,
) -> list[Sample]:
    """`lmlab sample RUN ...`: print samples (the first streamed unless ``stream`` is off, or as JSON)."""

    out = out or sys.stdout
    err = err or sys.stderr
    model, _cfg, tokenizer = load_model_for_inference(
        run, device=inference_device(), decode_batch=num_samples
    )
    stream = stream and not as_json
    streamed_first = False

    def on_text(i: int, text: str) -> None:
        # The terminal can follow one sample live; the others are printed when all are done.
        nonlocal streamed_first
        if i == 0:
            if not streamed_first:
                if num_samples > 1:
                    out.write("--- sample 1 ---\n")
                out.write(prompt)
                streamed_first = True
            out.write(text)
            out.flush()

    samples = generate(
        model,
        tokenizer,
        prompt,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
        stop=stop,
        num_samples=num_samples,
        seed=seed,
        stream_callback=on_text if stream else None,
    )
    if as_json:
        rows = [{"index": i, "prompt": prompt, **asdict(s)} for i, s in enumerate(samples)]
        out.write(json.dumps(rows, indent=2) + "\n")
    else:
        for i, s in enumerate(samples):
            if stream and i == 0:
                if not streamed_first:  # nothing was generated: still show the prompt
                    if num_samples > 1:
                        out.write("--- sample 1 ---\n")
                    out.write(prompt)
                out.write("\n")
                continue
            if num_samples > 1:
                out.write(f"--- sample {i + 1} ---\n")
            out.write(prompt + s.text + "\n")
        out.flush()
    for s in samples:
        if s.message:
            err.write(f"lmlab: note: {s.message}\n")
            break
    return samples
