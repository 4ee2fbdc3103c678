"""`lmlab sft CONFIG`: instruction fine-tuning of a trained run, through the pretraining loop.

1. The base run (``train.init_from``, a run or checkpoint folder) supplies the weights, the
   model config (the sft config's ``[model]`` is replaced by it, except ``model.dropout``)
   and the tokenizer.
2. Instruction records come from ``sft.data`` (and ``sft.mine``: documented functions mined
   into ``RUN/mined.jsonl`` first), are rendered with ``sft.template`` and tokenized with a
   response-only loss mask (:mod:`lmlab.data.sft`); unusable records are skipped and counted.
3. The held-out examples (``sft.val_data``, else ``sft.val_fraction`` of the data) are scored
   with the base weights before training, so the run reports its held-out loss before/after.
4. ``lmlab.train.loop.train`` runs with :class:`lmlab.data.sft.SftData` as its batch source:
   the same checkpoints, resume, logging, evaluation and early stopping as pretraining.
   ``sft.epochs`` > 0 sets ``train.max_steps``.

The run folder gets ``template.json`` (read by ``lmlab chat``) and ``sft.json`` (sources,
template, example and skip counts, the data fingerprint, held-out loss before and after).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from lmlab.config import Config
from lmlab.data import sft as sft_data
from lmlab.data.loader import TokenSplit
from lmlab.data.mine import format_report, mine_pairs
from lmlab.data.sft import resolve_template
from lmlab.data.shards import read_meta
from lmlab.device import resolve_device
from lmlab.errors import CheckpointError, ConfigError, DataError
from lmlab.eval.metrics import evaluate_batches
from lmlab.export.hf_import import PREFIX, apply_model_fields, load_hf_model, read_hf_model
from lmlab.io import read_json, write_json
from lmlab.runs import open_run_dir
from lmlab.tokenizer import load_tokenizer
from lmlab.train import checkpoint as ck
from lmlab.train import distributed as dd
from lmlab.train.checkpoint import model_differences
from lmlab.train.loop import train


def _log(msg: str, main: bool) -> None:
    if main:
        print(msg, flush=True)


def _base_run(cfg: Config) -> tuple[Path | None, Config, Path]:
    """(checkpoint, its config, tokenizer folder) of ``train.init_from``; no checkpoint for
    ``hf:FOLDER`` (:mod:`lmlab.export.hf_import`), whose config.json is the base config."""

    if not cfg.train.init_from:
        raise ConfigError(
            "train.init_from: sft starts from a trained run; name its folder (e.g. runs/demo/run)"
        )
    if cfg.train.init_from.startswith(
        "hf:"
    ):  # a transformers folder: no checkpoint, its own tokenizer
        hfm = read_hf_model(cfg.train.init_from)
        base = Config()
        apply_model_fields(base.model, hfm)
        cfg.train.init_from = PREFIX + str(hfm.folder)
        return None, base, hfm.folder
    path = Path(cfg.train.init_from)
    try:
        ckpt = ck.resolve_checkpoint(path)
    except CheckpointError as e:
        if not (path / "run").is_dir():
            raise CheckpointError(f"train.init_from: {e}") from None
        ckpt = ck.resolve_checkpoint(path / "run")  # a demo/recipe output folder: its run
    base = ck.read_config(ckpt)
    tok = ck.find_tokenizer(ckpt, base)
    if tok is None:
        raise CheckpointError(
            f"{ckpt}: the base run has no tokenizer (run/tokenizer, data.tokenizer or its dataset's)"
        )
    return ckpt, base, tok


def _replay_split(cfg: Config, tokenizer: Any):
    """The pretraining split replayed into SFT batches, checked against the tokenizer."""

    if not cfg.data.path:
        raise ConfigError(
            "sft.replay_fraction: needs pretraining data (data.path; the base run names none)"
        )
    meta = read_meta(cfg.data.path)
    fp = meta.get("tokenizer_fingerprint")
    if fp and fp != tokenizer.fingerprint():
        raise ConfigError(
            f"data.path: {cfg.data.path} was tokenized with another tokenizer than the base run's"
        )
    return TokenSplit(cfg.data.path, "train", meta)


def build_sft_data(
    cfg: Config,
    tokenizer: Any,
    tokenizer_dir: Path,
    run_dir: Path,
    main: bool = True,
    reuse_mined: bool = False,
) -> tuple[Any, dict[str, Any]]:
    """Read, render, tokenize and split the instruction data: (SftData, report for sft.json)."""

    s = cfg.sft
    template = sft_data.resolve_template(s.template)
    skips = sft_data.SkipReport(on_error=s.on_error)
    sources = list(s.data)
    mined: dict[str, Any] | None = None
    if s.mine:
        out = run_dir / "mined.jsonl"
        if reuse_mined and out.is_file():
            _log(f"sft: reusing {out}", main)
        else:
            mined = mine_pairs(s.mine, out)
            _log(format_report(mined), main)
        sources.append(str(out))
    if not sources:
        raise ConfigError("sft.data: no instruction data (give files, hf:NAME, or sft.mine)")
    T = cfg.model.context_length
    records = sft_data.read_records(sources, skips, s.mbpp_tests)
    examples = sft_data.tokenize_records(records, tokenizer, template, T, skips)
    if s.val_data:
        val_records = sft_data.read_records(s.val_data, skips, s.mbpp_tests)
        val = sft_data.tokenize_records(val_records, tokenizer, template, T, skips)
        train = examples
    else:
        if not examples:
            raise DataError(f"sft.data: no usable examples ({skips.summary()})")
        train, val = (
            sft_data.hold_out(examples, s.val_fraction, cfg.train.seed)
            if s.val_fraction > 0
            else (examples, [])
        )
    train = sft_data.subset(train, s.max_examples, cfg.train.seed)
    if not train:
        raise DataError(f"sft.data: no usable training examples ({skips.summary()})")
    _log(f"sft: {len(train)} training and {len(val)} held-out examples, {skips.summary()}", main)
    for line in skips.named[:20]:
        _log(f"  skipped {line}", main)
    replay = _replay_split(cfg, tokenizer) if s.replay_fraction > 0 else None
    eot = int(tokenizer.eot_id)
    meta = {
        "vocab_size": tokenizer.vocab_size,
        "eot_id": eot,
        "tokenizer": str(Path(tokenizer_dir).resolve()),
    }
    data = sft_data.SftData(
        train, val, meta, pad_id=eot, replay=replay, replay_fraction=s.replay_fraction
    )
    lengths = [e.length for e in train]
    report = {
        "base": cfg.train.init_from,
        "sources": sources,
        "val_sources": list(s.val_data),
        "template": sft_data.template_record(template),
        "mbpp_tests": s.mbpp_tests,
        "records": len(records),
        "train_examples": len(train),
        "val_examples": len(val),
        "train_tokens": int(sum(lengths)),
        "train_targets": int(sum(e.length - e.n_prompt + 1 for e in train)),
        "skipped": skips.as_dict(),
        "mined": mined,
        "replay_fraction": s.replay_fraction,
        "replay_data": cfg.data.path if replay is not None else None,
        "fingerprint": sft_data.fingerprint(train) + ":" + sft_data.fingerprint(val),
    }
    return data, report


def held_out_loss(ckpt: Path | None, data: Any, cfg: Config) -> float | None:
    """Mean loss per learned token of the held-out examples under ``ckpt``'s weights."""

    batches = data.val_batches(cfg.eval_batch_size, cfg.eval.batches, cfg.train.seed)
    if not batches:
        return None
    device = resolve_device(cfg.train.device)
    if ckpt is None:  # hf:FOLDER
        model = load_hf_model(cfg.train.init_from, dataclasses.replace(cfg.model))[0].to(device)
    else:
        model, _, _ = ck.load_model(ckpt, device)
    sums = evaluate_batches(model, batches, device)
    return sums["nats"] / max(sums["tokens"], 1)


def _adopt_base_run(cfg: Config, run_dir: Path, main: bool) -> tuple[Path | None, Config, Path]:
    """:func:`_base_run`, with its model config taken over (except ``model.dropout``) and its
    exact checkpoint recorded as ``train.init_from``."""

    ckpt, base, tok_dir = _base_run(cfg)
    if ckpt is not None and run_dir.resolve() in (ckpt.resolve(), ckpt.parent.parent.resolve()):
        raise ConfigError(
            "train.out: the sft run folder must differ from train.init_from (the base run)"
        )
    if ckpt is not None:
        cfg.train.init_from = str(ckpt)  # the exact checkpoint, recorded in the run's config
    diffs = model_differences(base.model, cfg.model)
    dropout = cfg.model.dropout
    cfg.model = base.model
    cfg.model.dropout = dropout
    _log(
        f"sft: model config taken from the base run {cfg.train.init_from} (the sft config's [model] is ignored"
        + (
            f"; it differed in {len(diffs)} key(s): {', '.join(d.split(':')[0] for d in diffs)}"
            if diffs
            else ""
        )
        + f"); model.dropout = {dropout}",
        main,
    )
    return ckpt, base, tok_dir


def run_sft(cfg: Config, resume: bool = False, force: bool = False):
    """Fine-tune ``train.init_from`` on ``cfg.sft``'s instruction data into ``train.out``."""

    main = dd.from_env().is_main
    run_dir = Path(cfg.train.out)
    if cfg.data.mix:
        raise ConfigError("data.mix: sft mixes pretraining data with sft.replay_fraction instead")
    # 1) the base run: model config, tokenizer, (replay) data
    ckpt, base, tok_dir = _adopt_base_run(cfg, run_dir, main)
    tokenizer = load_tokenizer(tok_dir)
    cfg.data.tokenizer = str(Path(tok_dir).resolve())
    if not cfg.data.path and base.data.path and Path(base.data.path).is_dir():
        cfg.data.path = base.data.path  # replay source, and what `lmlab eval` scores (forgetting)

    template = resolve_template(cfg.sft.template)
    cfg.sft.template = template.prompt if template.name == "custom" else template.name
    if main:  # claim the run folder before mined.jsonl, sft.json or template.json go into it
        open_run_dir(run_dir, resume=resume, force=force)
    # 2) instruction data
    data, report = build_sft_data(cfg, tokenizer, tok_dir, run_dir, main, reuse_mined=resume)
    sft_json = run_dir / "sft.json"
    before: float | None = None
    if resume and sft_json.is_file():
        old = read_json(sft_json)
        if isinstance(old, dict) and old.get("fingerprint") not in (None, report["fingerprint"]):
            raise DataError(
                f"{sft_json}: the instruction data changed since this run started; cannot resume exactly"
            )
        before = old.get("val_loss_before") if isinstance(old, dict) else None
    if cfg.sft.epochs > 0:
        B = cfg.batch_shape(dd.from_env().world)[0]
        rows = B - (max(1, round(cfg.sft.replay_fraction * B)) if data.replay is not None else 0)
        cfg.train.max_steps = max(1, math.ceil(cfg.sft.epochs * len(data.train) / rows))
        _log(
            f"sft: {cfg.sft.epochs:g} epoch(s) of {len(data.train)} examples at {rows} per step -> train.max_steps = {cfg.train.max_steps}",
            main,
        )
    cfg.validate()
    # 3) held-out loss of the base weights, then the run folder's records
    if not resume or before is None:
        before = held_out_loss(ckpt, data, cfg)
        if before is not None:
            _log(f"sft: held-out loss before fine-tuning: {before:.4f}", main)
    report["val_loss_before"] = before
    if main:
        write_json(run_dir / "template.json", report["template"])
        write_json(sft_json, report)
    # 4) the shared training loop with the SFT batch source
    result = train(cfg, resume=resume, data=data, force=force)
    report["val_loss_after"] = result.final_val_loss
    report["best_val_loss"] = result.best_val_loss
    if main:
        write_json(sft_json, report)
        if before is not None and result.final_val_loss is not None:
            _log(
                f"sft: held-out loss {before:.4f} -> {result.final_val_loss:.4f} (template {template.name}; "
                f"chat with: lmlab chat {run_dir})",
                main,
            )
    return result
