"""Training an encoder-decoder (``model.arch = "encdec"``) through the shared training loop.

1. The decoder's tokenizer is ``data.tokenizer`` (or the recipe's ``[tokenizer]`` stage); the
   encoder and its own tokenizer come from ``model.encoder`` (a local folder, or a hub name
   when online).
2. Pairs from ``encdec.data`` are read, tokenized and split (:mod:`lmlab.data.pairs`);
   ``encdec.val_data``, else ``encdec.val_fraction`` of the pairs, is held out.
3. :func:`lmlab.train.loop.train` runs with :class:`~lmlab.data.pairs.PairData` as its batch
   source: the same checkpoints (decoder weights only: the encoder is frozen and reloaded
   from its source), exact resume, logging, evaluation and early stopping as every other run.
   The encoder's parameters have ``requires_grad=False`` and never reach the optimizer.
4. The trained decoder writes ``encdec.parse_samples`` greedy targets for held-out sources;
   the parse rate is the share that ``compile()`` accepts (a symbolic tokenizer's outputs are
   restored with generated names first). It goes into ``encdec.json`` and report.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lmlab.config import Config
from lmlab.data import pairs as pair_data
from lmlab.data import sft as sft_data
from lmlab.data.pairs import generate_targets
from lmlab.device import resolve_device
from lmlab.errors import ConfigError, DataError
from lmlab.eval.code import parse_rate as symbolic_parse_rate
from lmlab.eval.code import parse_report
from lmlab.io import read_json, write_json
from lmlab.model.encdec import load_encoder_tokenizer
from lmlab.report import markdown_table, write_report
from lmlab.runs import open_run_dir
from lmlab.tokenizer import load_tokenizer
from lmlab.train import checkpoint as ck
from lmlab.train import distributed as dd
from lmlab.train.loop import train


def _log(msg: str, main: bool) -> None:
    if main:
        print(msg, flush=True)


def build_pair_data(
    cfg: Config, dec_tok: Any, enc_tok: Any, main: bool = True
) -> tuple[Any, dict[str, Any]]:
    """Read, tokenize and split ``cfg.encdec``'s pairs: (PairData, report for encdec.json)."""

    e = cfg.encdec
    if not e.data:
        raise ConfigError(
            "encdec.data: no pairs given (JSONL with source/target, or MBPP text/code records)"
        )
    skips = sft_data.SkipReport()

    def examples(sources: list[str]) -> list[Any]:
        records = sft_data.read_records(sources, skips)
        return pair_data.tokenize_pairs(
            records, enc_tok, dec_tok, cfg.model.context_length, e.max_source_tokens, skips
        )

    pairs = examples(list(e.data))
    if e.val_data:
        train, val = pairs, examples(list(e.val_data))
    elif e.val_fraction > 0 and len(pairs) >= 2:
        train, val = sft_data.hold_out(pairs, e.val_fraction, cfg.train.seed)
    else:
        train, val = pairs, []
    if not train:
        raise DataError(f"encdec.data: no usable pairs ({skips.summary()})")
    _log(f"encdec: {len(train)} training and {len(val)} held-out pairs, {skips.summary()}", main)
    for line in skips.named[:20]:
        _log(f"  skipped {line}", main)
    eot = int(dec_tok.eot_id)
    enc_pad = enc_tok.pad_token_id if enc_tok.pad_token_id is not None else 0
    meta = {"vocab_size": dec_tok.vocab_size, "eot_id": eot, "tokenizer": cfg.data.tokenizer}
    data = pair_data.PairData(train, val, meta, pad_id=eot, enc_pad_id=int(enc_pad))
    report = {
        "encoder": cfg.model.encoder,
        "sources": list(e.data),
        "val_sources": list(e.val_data),
        "train_pairs": len(train),
        "val_pairs": len(val),
        "skipped": skips.as_dict(),
        "fingerprint": pair_data.pairs_fingerprint(train) + ":" + pair_data.pairs_fingerprint(val),
    }
    return data, report


def parse_rate(
    model: Any, data: Any, dec_tok: Any, n: int, max_new_tokens: int, device: Any
) -> dict[str, Any]:
    """Greedy outputs for the first ``n`` held-out sources, and the share that compiles
    (:func:`lmlab.eval.code.parse_report`: an empty output does not pass)."""

    examples = (data.val or data.train)[:n]
    seqs = generate_targets(
        model, examples, data.enc_pad_id, int(data.meta["eot_id"]), max_new_tokens, device
    )
    if getattr(dec_tok, "kind", "") == "symbolic":  # restore names, then compile()
        result = symbolic_parse_rate(seqs, dec_tok)
    else:
        result = parse_report(dec_tok.decode(s) for s in seqs)
    result["examples"] = [
        {"source": e.where, "output": dec_tok.decode(s)} for e, s in zip(examples[:3], seqs[:3])
    ]
    return result


def run_encdec(cfg: Config, resume: bool = False, force: bool = False):
    """Train the decoder of ``cfg`` (``model.arch = "encdec"``) on ``cfg.encdec``'s pairs into ``train.out``."""

    main = dd.from_env().is_main
    if cfg.model.arch != "encdec":
        raise ConfigError(
            f"model.arch: the encoder-decoder trainer needs encdec, got {cfg.model.arch!r}"
        )
    if not cfg.data.tokenizer:
        raise ConfigError(
            "data.tokenizer: the decoder's tokenizer folder is required (or a [tokenizer] stage)"
        )
    if not Path(cfg.data.tokenizer).exists():
        raise ConfigError(f"data.tokenizer: {cfg.data.tokenizer} does not exist")
    if cfg.data.mix:
        raise ConfigError(
            "data.mix: replay of token shards does not apply to encoder-decoder pairs"
        )
    # 1) tokenizers
    dec_tok = load_tokenizer(cfg.data.tokenizer)
    cfg.data.tokenizer = str(Path(cfg.data.tokenizer).resolve())
    enc_tok = load_encoder_tokenizer(cfg.model.encoder)
    # 2) pairs
    data, report = build_pair_data(cfg, dec_tok, enc_tok, main)
    run_dir = Path(cfg.train.out)
    info_path = run_dir / "encdec.json"
    if resume and info_path.is_file():
        old = read_json(info_path)
        if isinstance(old, dict) and old.get("fingerprint") not in (None, report["fingerprint"]):
            raise DataError(
                f"{info_path}: the pairs changed since this run started; cannot resume exactly"
            )
    if main:
        open_run_dir(
            run_dir, resume=resume, force=force
        )  # before encdec.json: a folder of other files is refused
        write_json(info_path, report)
    # 3) the shared loop, with the pairs as its batch source
    result = train(cfg, resume=resume, data=data, force=force)
    if not main or result.stop_reason == "interrupted":
        return result
    # 4) the parse rate of the trained decoder's outputs for held-out sources
    if cfg.encdec.parse_samples:
        report["parse"] = _report_parse_rate(cfg, run_dir, data, dec_tok, result)
    report["result"] = result.as_dict()
    write_json(info_path, report)
    return result


def _report_parse_rate(cfg: Config, run_dir: Path, data: Any, dec_tok: Any, result: Any) -> dict:
    """The trained decoder's parse rate on held-out sources, logged and put into report.md."""

    e = cfg.encdec
    device = resolve_device(cfg.train.device)
    model, _, _ = ck.load_model(run_dir, device, encdec_ok=True)
    parse = parse_rate(
        model, data, dec_tok, e.parse_samples, e.max_new_tokens or cfg.model.context_length, device
    )
    _log(
        f"encdec: parse rate {parse['parse_rate']:.2%} ({parse['parsed']}/{parse['samples']} greedy outputs "
        "for held-out sources compile)",
        True,
    )
    rows = {k: parse[k] for k in ("samples", "parsed", "parse_rate")}
    examples = "\n".join(
        f"- `{x['source']}`:\n\n```\n{x['output']}\n```" for x in parse["examples"]
    )
    write_report(
        run_dir,
        {
            "Result": result.table(),
            "Parse rate (held-out sources, greedy)": markdown_table([rows]) + "\n" + examples,
        },
    )
    return parse
