"""Text generation: KV-cached decoding with greedy, temperature, top-k, top-p, a repetition
penalty, stop strings, a token limit, streaming and seeded reproducibility.

The engine prefills the prompt once (all samples share it, one batch row each), then feeds one
token per step through the model's KV cache. Rows of different prompts decode in one batch too
(:func:`generate_rows`): left-padded, the padding masked in the cache. Past the context length:

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

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

import torch

from lmlab.config import SampleConfig
from lmlab.device import inference_device
from lmlab.errors import LmlabError
from lmlab.runs import load_model_for_inference
from lmlab.sample_text import RowOutputs, Sample, StopWhen, StreamCallback

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


def _can_pad(model: torch.nn.Module) -> bool:
    """Whether rows of different lengths can share a batch left-padded: a KV cache to mask the
    padding in, and positions that are only relative (RoPE, or none)."""
    return _supports_cache(model) and _can_slide(model)


class _Stepper:
    """Produces next-token logits for a growing (B, L) sequence, with or without a KV cache.

    Both paths give identical logits (up to float noise): each step sees the last
    ``context_length`` tokens, positions counted from the start of that window. Rows may be
    left-padded (``pad``: each row's padding columns), the padding masked out (cached path).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        batch_size: int,
        use_cache: bool,
        slide_every: int = 1,
        pad: torch.Tensor | None = None,
    ) -> None:
        self.model = model
        self.ctx = _context_length(model)
        self.slide = _can_slide(model)
        self.use_cache = use_cache and _supports_cache(model)
        self.batch_size = batch_size
        self.slide_every = max(1, min(slide_every, self.ctx or 1))
        self.pad = pad if pad is not None and bool(pad.any()) else None  # (B,) long
        self.cache: Any = None

    def _window(self, seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The columns a step sees, and which of them are each row's padding (None: none):
        all of ``seq``, or past ``ctx`` the window's start moved on by whole multiples of
        ``slide_every`` (the same for the cached path, which prefills exactly when the start
        moves). The rows' windows move together, so a batch re-prefills once per
        ``slide_every`` tokens however its rows' lengths differ."""
        L = seq.shape[1]
        start = 0
        if self.ctx is not None and L > self.ctx:
            if not self.slide:
                raise ContextFull
            over, k = L - self.ctx, self.slide_every
            start = -(-over // k) * k
        if self.pad is None:
            return seq[:, start:], None
        columns = torch.arange(start, L, device=seq.device)[None, :]
        return seq[:, start:], columns < self.pad[:, None]  # left of each row's first token

    def _prefill(self, seq: torch.Tensor) -> torch.Tensor:
        window, pad = self._window(seq)
        if not self.use_cache and pad is None:
            return self.model(window)[:, -1, :]
        if self.cache is None:  # padding needs the cache's mask even when not caching
            self.cache = self.model.new_kv_cache(self.batch_size, self.ctx)
        self.cache.reset()
        self.cache.set_padding(pad)
        return self.model(window, kv_cache=self.cache, last_only=True)[:, -1, :]

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


def _decode_loop(
    model: torch.nn.Module,
    seq: torch.Tensor,
    out: RowOutputs,
    *,
    max_new_tokens: int,
    choose: Callable[[torch.Tensor], torch.Tensor],
    seen: torch.Tensor | None,
    repetition_penalty: float,
    tok_vocab: int,
    eot: int | None,
    use_cache: bool,
    slide_every: int = 1,
    pad: torch.Tensor | None = None,
) -> None:
    """Run the model step by step, feeding each chosen token to ``out``, until every sample is
    done, the token limit, or (learned positions) the context length."""
    B = seq.shape[0]
    stepper = _Stepper(model, B, use_cache, slide_every, pad)
    logits = stepper.first(seq) if max_new_tokens > 0 and not all(out.done) else None
    for step in range(max_new_tokens if logits is not None else 0):
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
    return generate_rows(
        model,
        tokenizer,
        [prompt] * num_samples,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
        stop=stop,
        seed=seed,
        stream_callback=stream_callback,
        use_cache=use_cache,
        stop_at_eot=stop_at_eot,
        stop_when=stop_when,
        slide_every=slide_every,
    )


def generate_rows(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[str | Sequence[int]],
    *,
    max_new_tokens: int | Sequence[int] = SampleConfig.max_new_tokens,
    temperature: float = SampleConfig.temperature,
    top_k: int = SampleConfig.top_k,
    top_p: float = SampleConfig.top_p,
    repetition_penalty: float = SampleConfig.repetition_penalty,
    stop: Sequence[str] = (),
    seed: int = SampleConfig.seed,
    stream_callback: StreamCallback | None = None,
    use_cache: bool = True,
    stop_at_eot: bool = True,
    stop_when: StopWhen | None = None,
    slide_every: int = 1,
) -> list[Sample]:
    """One continuation of each of ``prompts`` (text or ids; repeat one for several samples of
    it), decoded together: :func:`generate`'s arguments, with ``i`` in the callbacks the row.

    Rows of different lengths are left-padded into one batch and their padding masked (RoPE and
    no-position models with a KV cache): within the context each row sees what it would alone,
    so its logits differ from a batch of its own only by rounding. Past the context the
    window is the batch's (its columns, sliding ``slide_every`` at a time): with 1 each row
    still sees exactly its last ``context_length`` tokens; with k a row sees at least
    ``context_length - k + 1`` of them, as alone, though its window may start up to k - 1
    tokens elsewhere. Other models decode each length's rows as a batch of their own (seeded
    ``seed``, ``seed + 1``, ... in order of first appearance). ``max_new_tokens`` may be one
    limit per row.
    """
    limits = _row_limits(max_new_tokens, len(prompts))
    _check_args(min(limits, default=0), temperature, top_k, top_p, repetition_penalty, len(prompts))
    if slide_every < 1:
        raise LmlabError(f"slide_every: must be >= 1, got {slide_every}")
    ids = [encode_prompt(tokenizer, p) for p in prompts]
    vocab = int(getattr(_model_config(model), "vocab_size", 0) or 0)
    for row in dict.fromkeys(tuple(r) for r in ids):
        _check_prompt(model, list(row), vocab)
    if len({len(r) for r in ids}) > 1 and not _can_pad(model):
        same = dict(temperature=temperature, top_k=top_k, top_p=top_p, stop=stop)
        same.update(repetition_penalty=repetition_penalty, use_cache=use_cache)
        same.update(stop_at_eot=stop_at_eot, slide_every=slide_every)
        return _generate_by_length(
            model, tokenizer, ids, limits, seed, stream_callback, stop_when, same
        )
    device = next(model.parameters()).device
    tok_vocab = int(getattr(tokenizer, "vocab_size", 0) or 0)
    eot = getattr(tokenizer, "eot_id", None) if stop_at_eot else None
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    seq, pad = _left_padded(ids, device)
    seen = None if repetition_penalty == 1.0 else _seen_tokens(ids, vocab or tok_vocab, device)

    def choose(logits: torch.Tensor) -> torch.Tensor:
        return choose_next(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=gen)

    out = RowOutputs(tokenizer, list(stop), len(ids), stream_callback, stop_when, limits)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            _decode_loop(
                model,
                seq,
                out,
                max_new_tokens=max(limits, default=0),
                choose=choose,
                seen=seen,
                repetition_penalty=repetition_penalty,
                tok_vocab=tok_vocab,
                eot=eot,
                use_cache=use_cache,
                slide_every=slide_every,
                pad=pad,
            )
    finally:
        model.train(was_training)
    return out.samples(ids)


def _row_limits(max_new_tokens: int | Sequence[int], rows: int) -> list[int]:
    """Each row's token limit: one for all, or one per row."""
    if isinstance(max_new_tokens, int):
        return [max_new_tokens] * rows
    limits = [int(n) for n in max_new_tokens]
    if len(limits) != rows:
        raise LmlabError(f"max_new_tokens: {len(limits)} limits for {rows} prompts")
    return limits


def _seen_tokens(ids: list[list[int]], vocab: int, device: torch.device) -> torch.Tensor:
    """(B, vocab) bool: the tokens of each row's prompt (the repetition penalty's start)."""
    seen = torch.zeros(len(ids), vocab, dtype=torch.bool, device=device)
    for i, r in enumerate(ids):
        seen[i, torch.tensor(r, device=device)] = True
    return seen


def _left_padded(ids: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, longest) ids, each row right-aligned after its padding (any id, here 0: no query
    sees those columns), and each row's padding columns (B,)."""
    width = max(map(len, ids))
    seq = torch.tensor([[0] * (width - len(r)) + r for r in ids], dtype=torch.long, device=device)
    pad = torch.tensor([width - len(r) for r in ids], dtype=torch.long, device=device)
    return seq, pad


def _generate_by_length(
    model: torch.nn.Module,
    tokenizer: Any,
    ids: list[list[int]],
    limits: list[int],
    seed: int,
    stream_callback: StreamCallback | None,
    stop_when: StopWhen | None,
    kwargs: dict[str, Any],
) -> list[Sample]:
    """:func:`generate_rows` for a model that cannot pad: each prompt length's rows as a batch."""
    groups: dict[int, list[int]] = {}
    for i, r in enumerate(ids):
        groups.setdefault(len(r), []).append(i)
    out: list[Sample | None] = [None] * len(ids)
    for k, where in enumerate(groups.values()):

        def relay(j: int, text: str, where: list[int] = where) -> None:
            assert stream_callback is not None
            stream_callback(where[j], text)

        def ended(j: int, text: str, where: list[int] = where) -> bool:
            assert stop_when is not None
            return stop_when(where[j], text)

        samples = generate_rows(
            model,
            tokenizer,
            [ids[i] for i in where],
            max_new_tokens=[limits[i] for i in where],
            seed=seed + k,
            stream_callback=relay if stream_callback is not None else None,
            stop_when=ended if stop_when is not None else None,
            **kwargs,
        )
        for i, sample in zip(where, samples):
            out[i] = sample
    return [s for s in out if s is not None]


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
