"""Instruction data for fine-tuning: records, prompt templates, loss masks, batches.

Records
    ``{"instruction", "input", "output"}`` in the Alpaca layout, read from JSON (a list of
    objects) or JSONL files, from MBPP-style records (``text`` -> ``code``), or from a Hugging
    Face dataset (``hf:NAME``, needs the optional ``datasets`` package and a network). A source
    may end in ``#SPLIT``: for MBPP records it keeps one standard split by task id (``train``
    601-974, ``validation`` 511-600, ``test`` 11-510, ``prompt`` 1-10); for ``hf:`` sources it
    names the hub split.

    An MBPP record becomes ``instruction = text + "\\nYour code should pass these tests:\\n" +
    the test_list asserts`` (``sft.mbpp_tests = true``, the default), as in the original MBPP
    prompt (Austin et al., 2021): the asserts are the only place that names the function and
    its signature, so a model cannot match the tests without them. ``output`` is ``code``
    with ``\\r\\n`` line ends normalised.

Examples and the loss mask
    One example is ``[eot] + prompt + response + [eot]``: it starts after a document boundary
    (as ``lmlab chat`` feeds a first turn) and the trailing end-of-text teaches the model to
    stop. Prompt and response are tokenized separately, so the prompt's tokens are exactly
    those ``lmlab chat`` feeds at inference. Inputs are ``ids[:-1]``, targets ``ids[1:]``
    with every target inside the prompt set to -100: only the response and its end-of-text
    are learned (the loss lives outside the model and ignores -100).

Batching: length-bucketed padding, not packing
    The model's attention is plain causal SDPA with no per-document mask, so packing several
    examples into one sequence would let later examples attend to earlier ones. Instead each
    sequence holds one example; each epoch shuffles the examples, sorts them by length inside
    chunks of ``BUCKET_BATCHES`` batches and cuts those into batches, so a micro-batch holds
    examples of similar length and is padded only to its own longest (padding targets are
    -100, and causal attention never lets real tokens see the padding after them). The waste
    is small and the result is exactly the per-example loss, which packing without a
    block-diagonal mask could not give.

    Like :class:`lmlab.data.loader.BatchLoader`, :class:`SftLoader` makes step ``s``'s batch
    a function of ``(seed, s)``: its state is ``{"seed", "step"}`` and resume is exact.
    ``sft.replay_fraction`` replaces that fraction of each batch's rows by random windows of
    pretraining tokens (all targets learned), as long as the step's longest example.

Malformed records (bad JSON, a missing or non-string field, an empty response, an example
longer than the context) are skipped and counted per reason, the first few named as
``file:line``; with ``sft.on_error = "error"`` the first one raises DataError instead.
"""

from __future__ import annotations

import hashlib
import json
import math
import string
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmlab.errors import ConfigError, DataError, LmlabError
from lmlab.io import expand_inputs

BUCKET_BATCHES = 16  # batches sorted together by length: bigger pads less but mixes less
_MAX_NAMED = 10  # skipped records named per reason
_HOLDOUT_SALT = 0x5F7_0001
_SUBSET_SALT = 0x5F7_0002
_REPLAY_SALT = 0x5F7_0003
_VAL_SALT = 0x5F7_0004
IGNORE = -100

# --- templates ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptTemplate:
    """How a record's instruction (and input) are written before the response.

    ``prompt`` is used when the input is empty (and by ``lmlab chat``, which reads its
    ``prompt`` and ``stop`` attributes); ``prompt_with_input`` otherwise.
    """

    name: str
    prompt: str  # contains {instruction}
    prompt_with_input: str  # contains {instruction} and, if it uses the input, {input}
    stop: tuple[str, ...] = ()

    def render(self, instruction: str, input: str = "") -> str:
        # str.format only parses the template; braces in the user's text are left alone
        if not input:
            return self.prompt.format(instruction=instruction, input="")
        if "{input}" not in self.prompt_with_input:
            instruction = f"{instruction}\n\n{input}"
        return self.prompt_with_input.format(instruction=instruction, input=input)

    def chat_prompt(self) -> str:
        """The no-input prompt with ``{prompt}`` where the user's message goes (template.json)."""
        return self.prompt.format(instruction="{prompt}", input="")


_ALPACA_HEAD = "Below is an instruction that describes a task"
TEMPLATES: dict[str, PromptTemplate] = {
    # Stanford Alpaca's two prompts (tatsu-lab/stanford_alpaca, train.py)
    "alpaca": PromptTemplate(
        name="alpaca",
        prompt=(
            f"{_ALPACA_HEAD}. Write a response that appropriately completes the request.\n\n"
            "### Instruction:\n{instruction}\n\n### Response:\n"
        ),
        prompt_with_input=(
            f"{_ALPACA_HEAD}, paired with an input that provides further context. "
            "Write a response that appropriately completes the request.\n\n"
            "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
        ),
        stop=("### Instruction:",),
    ),
}
DEFAULT_TEMPLATE = "alpaca"


def resolve_template(value: str) -> PromptTemplate:
    """``sft.template``: a name in TEMPLATES (empty: alpaca) or a custom format string.

    A custom string must contain ``{instruction}`` and may contain ``{input}``; any other
    placeholder, a format spec or unbalanced braces raise ConfigError naming sft.template.
    """
    if not value:
        value = DEFAULT_TEMPLATE
    if value in TEMPLATES:
        return TEMPLATES[value]
    names: list[str] = []
    try:
        for _, fname, spec, conv in string.Formatter().parse(value):
            if fname is None:
                continue
            if fname not in ("instruction", "input"):
                raise ConfigError(
                    f"sft.template: unknown placeholder {{{fname}}} (known: {{instruction}}, {{input}}; "
                    f"named templates: {', '.join(TEMPLATES)}; write {{{{ }}}} for literal braces)"
                )
            if spec or conv:
                raise ConfigError(f"sft.template: placeholder {{{fname}}} takes no format spec or conversion")
            names.append(fname)
    except ValueError as e:
        raise ConfigError(f"sft.template: not a valid format string ({e}); write {{{{ }}}} for literal braces") from None
    if "instruction" not in names:
        raise ConfigError(
            f"sft.template: {value!r} is neither a named template ({', '.join(TEMPLATES)}) "
            "nor a format string with {instruction}"
        )
    return PromptTemplate(name="custom", prompt=value, prompt_with_input=value)


def template_record(t: PromptTemplate) -> dict[str, Any]:
    """What the run folder's ``template.json`` holds (read by ``lmlab chat``)."""
    return {
        "prompt": t.chat_prompt(),
        "stop": list(t.stop),
        "name": t.name,
        "template": t.prompt if t.name == "custom" else t.name,
        "prompt_with_input": t.prompt_with_input,
    }


# --- records -----------------------------------------------------------------------------------


@dataclass
class Record:
    instruction: str
    input: str
    output: str
    where: str  # file:line (or hf:NAME[split]:index), for messages


@dataclass
class SkipReport:
    """Counts of records left out, per reason, with the first few named."""

    on_error: str = "skip"
    counts: dict[str, int] = field(default_factory=dict)
    named: list[str] = field(default_factory=list)

    def skip(self, where: str, reason: str, key: str) -> None:
        if self.on_error == "error":
            raise DataError(f"{where}: {reason}")
        self.counts[key] = self.counts.get(key, 0) + 1
        if sum(1 for n in self.named if n.endswith(f"[{key}]")) < _MAX_NAMED:
            self.named.append(f"{where}: {reason} [{key}]")

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        if not self.counts:
            return "skipped 0 records"
        parts = ", ".join(f"{n} {k}" for k, n in sorted(self.counts.items()))
        return f"skipped {self.total} records ({parts})"

    def as_dict(self) -> dict[str, Any]:
        return {"total": self.total, "counts": dict(self.counts), "first": list(self.named)}


def mbpp_instruction(row: dict[str, Any], with_tests: bool) -> str:
    """MBPP's task text, with its test asserts appended when ``with_tests``."""
    text = str(row["text"]).strip()
    if with_tests and row.get("test_list"):
        text += "\nYour code should pass these tests:\n" + "\n".join(str(t) for t in row["test_list"])
    return text


def to_record(row: Any, where: str, mbpp_tests: bool = True) -> tuple[Record | None, str, str]:
    """A parsed JSON object -> (Record, "", "") or (None, reason, key) when unusable."""
    if not isinstance(row, dict):
        return None, f"expected a JSON object, got {type(row).__name__}", "not_an_object"
    if "instruction" in row or "output" in row:
        missing = [k for k in ("instruction", "output") if k not in row]
        if missing:
            return None, f"missing field(s) {', '.join(missing)}", "missing_field"
        ins, inp, out = row["instruction"], row.get("input") or "", row["output"]
    elif "text" in row or "code" in row:
        missing = [k for k in ("text", "code") if k not in row]
        if missing:
            return None, f"missing field(s) {', '.join(missing)}", "missing_field"
        if not isinstance(row["text"], str):
            return None, "field 'text' is not a string", "bad_field"
        ins, inp, out = mbpp_instruction(row, mbpp_tests), "", row["code"]
    elif "source" in row or "target" in row:
        missing = [k for k in ("source", "target") if k not in row]
        if missing:
            return None, f"missing field(s) {', '.join(missing)}", "missing_field"
        ins, inp, out = row["source"], "", row["target"]
    else:
        return None, "missing fields: need instruction/output (Alpaca), text/code (MBPP) or source/target", "missing_field"
    for name, value in (("instruction", ins), ("input", inp), ("output", out)):
        if not isinstance(value, str):
            return None, f"field {name!r} is not a string", "bad_field"
    out = out.replace("\r\n", "\n").rstrip()
    if not out.strip():
        return None, "empty response (output)", "empty_response"
    if not ins.strip():
        return None, "empty instruction", "empty_instruction"
    return Record(ins.replace("\r\n", "\n").strip(), inp.replace("\r\n", "\n").strip(), out, where), "", ""


def split_spec(spec: str) -> tuple[str, str]:
    """``SOURCE#SPLIT`` -> (SOURCE, SPLIT); a '#' in an existing file name is left alone."""
    base, sep, split = spec.rpartition("#")
    if not sep or not base or Path(spec).exists() or not split.isidentifier():
        return spec, ""
    return base, split


def _json_rows(path: Path) -> Iterator[tuple[Any, str, str | None]]:
    """(row, where, error) for every record of a JSON list or JSONL file."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    if text.lstrip().startswith("["):  # one JSON array
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
        for i, row in enumerate(rows):
            yield row, f"{path}:[{i}]", None
        return
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield json.loads(line), f"{path}:{lineno}", None
        except json.JSONDecodeError as e:
            yield None, f"{path}:{lineno}", f"malformed JSON ({e.msg})"


def _hf_rows(name: str, split: str) -> Iterator[tuple[Any, str, str | None]]:
    """Rows of a Hugging Face hub dataset (lazy ``datasets`` import; clear error offline)."""
    try:
        import datasets  # optional extra: pip install 'lmlab[datasets]'
    except ImportError:
        raise DataError(
            f"hf:{name}: hub datasets need the optional package 'datasets' (pip install 'lmlab[datasets]'); "
            "or download the data and give a local JSON/JSONL file"
        ) from None
    split = split or "train"
    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as e:  # offline, unknown name or split: datasets raises many types
        raise DataError(
            f"hf:{name}: cannot load split {split!r} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            "offline? give a local JSON/JSONL copy instead"
        ) from None
    for i, row in enumerate(ds):
        yield row, f"hf:{name}[{split}]:{i}", None


def read_records(sources: Sequence[str], skips: SkipReport, mbpp_tests: bool = True) -> list[Record]:
    """All usable records of ``sources`` (files, folders, globs, ``hf:NAME``, each ``[#SPLIT]``)."""
    from lmlab.eval.code import MBPP_SPLITS, mbpp_split

    records: list[Record] = []
    for spec in sources:
        src, split = split_spec(spec)
        if src.startswith("hf:"):
            rows: Iterable[tuple[Any, str, str | None]] = _hf_rows(src[3:], split)
            split = ""  # the hub already selected it
        else:
            if split and split not in MBPP_SPLITS:
                raise ConfigError(f"{spec}: #{split} is not an MBPP split ({', '.join(MBPP_SPLITS)})")
            files = expand_inputs([src], suffixes=(".json", ".jsonl"))
            rows = (r for f in files for r in _json_rows(f))
        for row, where, error in rows:
            if error is not None:
                skips.skip(where, error, "malformed_json")
                continue
            if split:
                tid = row.get("task_id") if isinstance(row, dict) else None
                try:
                    if mbpp_split(int(tid)) != split:
                        continue
                except (TypeError, ValueError):
                    skips.skip(where, f"#{split} selects MBPP records by task_id, and this one has none", "no_task_id")
                    continue
            rec, reason, key = to_record(row, where, mbpp_tests)
            if rec is None:
                skips.skip(where, reason, key)
            else:
                records.append(rec)
    return records


# --- tokenization ------------------------------------------------------------------------------


@dataclass
class Example:
    """One tokenized example: ``ids = [eot] + prompt + response + [eot]``."""

    ids: np.ndarray  # int64
    n_prompt: int  # leading tokens not learned (eot + prompt)
    where: str

    @property
    def length(self) -> int:
        """Sequence length (positions fed to the model)."""
        return len(self.ids) - 1

    def xy(self) -> tuple[np.ndarray, np.ndarray]:
        """Inputs and targets, prompt targets set to -100."""
        x = self.ids[:-1]
        y = self.ids[1:].copy()
        y[: self.n_prompt - 1] = IGNORE
        return x, y


def tokenize_records(
    records: Sequence[Record], tokenizer: Any, template: PromptTemplate, max_len: int, skips: SkipReport
) -> list[Example]:
    """Records -> examples; those longer than ``max_len`` positions are skipped (counted)."""
    eot = getattr(tokenizer, "eot_id", None)
    if eot is None:
        raise DataError("the tokenizer has no <|endoftext|> token: SFT needs it to mark where a response ends")
    prompts = [template.render(r.instruction, r.input) for r in records]
    responses = [r.output for r in records]
    encoded: list[tuple[list[int], list[int]] | str] = []  # (prompt ids, response ids) or why not
    try:  # the fast batch path; a tokenizer that rejects some text (char) goes one by one
        encoded = list(zip(tokenizer.encode_ordinary_batch(prompts), tokenizer.encode_ordinary_batch(responses), strict=True))
    except (LmlabError, AttributeError):
        for p, r in zip(prompts, responses, strict=True):
            try:
                encoded.append((tokenizer.encode_ordinary(p), tokenizer.encode_ordinary(r)))
            except LmlabError as e:
                encoded.append(str(e))
    out: list[Example] = []
    for rec, enc in zip(records, encoded, strict=True):
        if isinstance(enc, str):
            skips.skip(rec.where, f"cannot tokenize ({enc})", "untokenizable")
            continue
        p, r = enc
        ids = np.array([eot, *p, *r, eot], dtype=np.int64)
        if len(ids) - 1 > max_len:
            skips.skip(rec.where, f"{len(ids) - 1} tokens, longer than the context ({max_len})", "too_long")
            continue
        out.append(Example(ids, 1 + len(p), rec.where))
    return out


def fingerprint(examples: Sequence[Example]) -> str:
    """sha256 over the examples' tokens and masks (resume checks the data did not change)."""
    h = hashlib.sha256()
    for e in examples:
        h.update(np.int64(e.n_prompt).tobytes())
        h.update(np.int64(len(e.ids)).tobytes())
        h.update(e.ids.tobytes())
    return h.hexdigest()


def hold_out(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """(train, held-out): a fixed random ``fraction`` (at least one) of ``examples`` held out."""
    n_val = max(1, round(fraction * len(examples)))
    if n_val >= len(examples):
        raise DataError(f"sft.val_fraction: {fraction} of {len(examples)} examples leaves none to train on")
    perm = np.random.default_rng([seed, _HOLDOUT_SALT]).permutation(len(examples))
    val_idx = set(perm[:n_val].tolist())
    train = [e for i, e in enumerate(examples) if i not in val_idx]
    val = [e for i, e in enumerate(examples) if i in val_idx]
    return train, val


def subset(examples: list[Example], n: int, seed: int) -> list[Example]:
    """A fixed random subset of ``n`` examples, in their original order (all when n is 0)."""
    if not n or n >= len(examples):
        return examples
    keep = np.sort(np.random.default_rng([seed, _SUBSET_SALT]).permutation(len(examples))[:n])
    return [examples[i] for i in keep]


# --- batches -----------------------------------------------------------------------------------


def collate(rows: Sequence[tuple[np.ndarray, np.ndarray]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) rows of varying length -> padded tensors; padding targets are -100."""
    T = max(len(x) for x, _ in rows)
    x = np.full((len(rows), T), pad_id, dtype=np.int64)
    y = np.full((len(rows), T), IGNORE, dtype=np.int64)
    for i, (xi, yi) in enumerate(rows):
        x[i, : len(xi)] = xi
        y[i, : len(yi)] = yi
    return torch.from_numpy(x), torch.from_numpy(y)


def _to_device(xy: tuple[torch.Tensor, torch.Tensor], device: torch.device | None):
    x, y = xy
    if device is not None and device.type != "cpu":
        x = x.pin_memory().to(device, non_blocking=True)
        y = y.pin_memory().to(device, non_blocking=True)
    return x, y


class SftLoader:
    """Instruction batches for step ``s``, a function of ``(seed, s)`` only (see module doc).

    The interface is :class:`lmlab.data.loader.BatchLoader`'s (``get``, ``accum_steps``,
    ``step``, ``state_dict``/``load_state_dict``) plus ``counts(step)``: the global batch's
    (real tokens, learned targets), which the training loop divides the summed loss by.
    """

    def __init__(
        self,
        examples: Sequence[Example],
        global_batch: int,
        micro_batch: int,
        seed: int,
        rank: int = 0,
        world: int = 1,
        device: torch.device | None = None,
        pad_id: int = 0,
        replay: Any = None,  # a lmlab.data.loader.TokenSplit
        replay_fraction: float = 0.0,
    ):
        if not examples:
            raise DataError("no training examples left (see the skip report)")
        if global_batch % world or (global_batch // world) % micro_batch:
            raise DataError(f"batch {global_batch} does not split into {world} process(es) x micro-batches of {micro_batch}")
        self.examples = list(examples)
        self.global_batch, self.micro_batch = global_batch, micro_batch
        self.per_rank = global_batch // world
        self.seed, self.rank, self.world, self.device, self.pad_id = seed, rank, world, device, pad_id
        self.replay = replay
        self.replay_rows = 0
        if replay is not None and replay_fraction > 0:
            self.replay_rows = max(1, round(replay_fraction * global_batch))
            if self.replay_rows >= global_batch:
                raise ConfigError(f"sft.replay_fraction: {replay_fraction} leaves no instruction rows in a batch of {global_batch}")
        self.sft_rows = global_batch - self.replay_rows
        self.steps_per_epoch = math.ceil(len(self.examples) / self.sft_rows)
        self.step = 0
        self._plan: tuple[int, list[np.ndarray]] | None = None
        self._lengths = np.array([e.length for e in self.examples], dtype=np.int64)
        self._targets = np.array([e.length - (e.n_prompt - 1) for e in self.examples], dtype=np.int64)
        # the mean real tokens per step, for the loop's throughput figure
        self.tokens_per_step = int(self._lengths.mean() * global_batch)

    @property
    def accum_steps(self) -> int:
        return self.per_rank // self.micro_batch

    def epoch_plan(self, epoch: int) -> list[np.ndarray]:
        """The epoch's batches as arrays of example indices (length-bucketed, shuffled)."""
        if self._plan is not None and self._plan[0] == epoch:
            return self._plan[1]
        rng = np.random.default_rng([self.seed, epoch])
        n, B = len(self.examples), self.sft_rows
        perm = rng.permutation(n)
        short = self.steps_per_epoch * B - n
        if short:  # fill the last batch from the start of this epoch's order
            perm = np.concatenate([perm, perm[:short]] if short <= n else [perm, np.resize(perm, short)])
        chunk = B * BUCKET_BATCHES
        batches = []
        for c in range(0, len(perm), chunk):
            part = perm[c : c + chunk]
            part = part[np.argsort(self._lengths[part], kind="stable")]
            batches += [part[i : i + B] for i in range(0, len(part), B)]
        order = rng.permutation(len(batches))
        plan = [batches[i] for i in order]
        self._plan = (epoch, plan)
        return plan

    def _rows(self, step: int) -> tuple[np.ndarray, np.ndarray | None]:
        """(example indices, replay windows or None) of the global batch, in row order."""
        idx = self.epoch_plan(step // self.steps_per_epoch)[step % self.steps_per_epoch]
        if not self.replay_rows:
            return idx, None
        L = int(self._lengths[idx].max()) + 1
        L = min(L, self.replay.n_tokens)
        rng = np.random.default_rng([self.seed, step, _REPLAY_SALT])
        starts = rng.integers(0, self.replay.n_tokens - L + 1, size=self.replay_rows)
        return idx, self.replay.windows(starts, L)

    def counts(self, step: int) -> tuple[int, int]:
        """(real input tokens, learned targets) of step ``step``'s global batch."""
        idx, win = self._rows(step)
        tokens = int(self._lengths[idx].sum())
        targets = int(self._targets[idx].sum())
        if win is not None:
            tokens += win.size - len(win)
            targets += win.size - len(win)
        return tokens, targets

    def get(self, step: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's micro-batches ``[(x, y), ...]`` for optimizer step ``step``."""
        idx, win = self._rows(step)
        rows = [self.examples[i].xy() for i in idx]
        if win is not None:
            rows += [(w[:-1], w[1:]) for w in win]
            # spread the replay rows over ranks and micro-batches
            perm = np.random.default_rng([self.seed, step, _REPLAY_SALT + 1]).permutation(len(rows))
            rows = [rows[i] for i in perm]
        mine = rows[self.rank * self.per_rank : (self.rank + 1) * self.per_rank]
        return [
            _to_device(collate(mine[i : i + self.micro_batch], self.pad_id), self.device)
            for i in range(0, self.per_rank, self.micro_batch)
        ]

    def next(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        batch = self.get(self.step)
        self.step += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "step": self.step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if int(state["seed"]) != self.seed:
            raise DataError(f"loader state was saved with seed {state['seed']}, this run uses {self.seed}")
        self.step = int(state["step"])


def val_batches(
    examples: Sequence[Example], batch_size: int, pad_id: int, max_batches: int = 0, seed: int = 0,
    rank: int = 0, world: int = 1,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed held-out batches (sorted by length to pad little); this rank's share.

    With ``max_batches`` > 0 and more examples than fit, a fixed random subset is used.
    """
    ex = list(examples)
    cap = max_batches * batch_size
    if max_batches and len(ex) > cap:
        keep = np.random.default_rng([seed, _VAL_SALT]).permutation(len(ex))[:cap]
        ex = [ex[i] for i in keep]
    ex.sort(key=lambda e: e.length)
    batches = [collate([e.xy() for e in ex[i : i + batch_size]], pad_id) for i in range(0, len(ex), batch_size)]
    return batches[rank::world]


@dataclass
class SftData:
    """Everything the training loop needs from SFT data (``lmlab.train.loop.train(data=...)``).

    ``meta`` plays the role of a prepared dataset's meta.json (vocab_size, eot_id, tokenizer).
    """

    train: list[Example]
    val: list[Example]
    meta: dict[str, Any]
    pad_id: int
    replay: Any = None
    replay_fraction: float = 0.0

    def loader(self, global_batch: int, micro_batch: int, seed: int, rank: int, world: int,
               device: torch.device | None) -> SftLoader:
        return SftLoader(self.train, global_batch, micro_batch, seed, rank, world, device, self.pad_id,
                         self.replay, self.replay_fraction)

    def val_batches(self, batch_size: int, max_batches: int, seed: int, rank: int = 0,
                    world: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        if not self.val:
            return None
        return val_batches(self.val, batch_size, self.pad_id, max_batches, seed, rank, world)
