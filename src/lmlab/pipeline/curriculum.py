"""Curricula: a recipe's ``[[phase]]`` tables run one after another through the same loop.

A phase names its data (a prepared dataset ``data``, or ``input`` files prepared here, after an
optional ``transform``: ``scramble`` shuffles each file's top-level statements, see
:mod:`lmlab.data.scramble`; ``instructions`` mines the documented functions of the input, see
:mod:`lmlab.data.mine`, and writes each as one plain-text document in the SFT prompt template
followed by the function), its length (``max_steps``, ``patience``) and its learning-rate
schedule (``lr``, ``min_lr``, ``warmup_steps``, ``lr_schedule``); a field left at its inherit
value (-1, or empty for ``lr_schedule``) takes the ``[train]`` value. ``replay`` is the fraction
of every batch's rows drawn from the earlier phases' training data, split evenly between them
(``data.mix`` of the phase's config, so :class:`lmlab.data.loader.BatchLoader` does the mixing).

``run_curriculum(cfg)`` (what ``lmlab run`` calls for a recipe with phases):

1. trains or reuses the tokenizer (``[tokenizer]``), shared by every phase;
2. prepares each phase's dataset into ``phase.out`` (default ``TRAIN_OUT/data/phase_N``),
   skipped when up to date (same ``stage.json`` keys as :mod:`lmlab.pipeline`);
3. trains phase N into ``TRAIN_OUT/phase_N`` with :func:`lmlab.train.loop.train` (one loop for
   everything, DESIGN habit 8). Phase 1 starts from ``train.init_from`` (or scratch); phase
   N > 1 starts from phase N-1's final weights (``train.init_from`` = its run). The optimizer
   starts fresh in every phase: AdamW moments belong to the previous data and schedule, and a
   new warmup re-grows them. A phase whose run already finished with the same config is kept,
   a partial one resumes, and once a phase is retrained every later phase is retrained too;
4. after each phase evaluates the phase's final weights on *every* phase's val split (fixed
   ``eval.batches`` windows), so the table "after phase k x val loss on phase j" shows
   learning (j = k), forgetting (j < k) and transfer (j > k). It is written to
   ``TRAIN_OUT/curriculum.json`` and ``TRAIN_OUT/report.md``.

Each phase run is an ordinary run folder (its ``config.toml`` has no phases), so ``lmlab eval``,
``sample`` and ``export`` work on ``TRAIN_OUT/phase_N`` as on any run.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from lmlab.config import PHASE_INHERITED, Config, PhaseConfig, resolve_vocab_size
from lmlab.data.mine import mine_pairs
from lmlab.data.prepare import format_report, prepare_dataset
from lmlab.data.scramble import scramble_files
from lmlab.data.sft import resolve_template
from lmlab.data.shards import read_meta
from lmlab.errors import ConfigError, DataError
from lmlab.eval.metrics import evaluate_path
from lmlab.io import atomic_write_text, read_json, write_json
from lmlab.outputs import check_output, write_marker
from lmlab.pipeline.stages import ensure_tokenizer, is_up_to_date, mark_done, stage_key
from lmlab.report import markdown_table
from lmlab.runs import plan_run
from lmlab.tokenizer import load_tokenizer
from lmlab.train.loop import train


def phase_name(ph: PhaseConfig, k: int) -> str:
    """The phase's name, or ``phase_K`` (K from 1)."""
    return ph.name or f"phase_{k}"


def phase_run_dir(cfg: Config, k: int) -> Path:
    return Path(cfg.train.out) / f"phase_{k}"


def phase_data_dir(cfg: Config, k: int) -> Path:
    ph = cfg.phase[k - 1]
    if ph.data:
        return Path(ph.data)
    return Path(ph.out) if ph.out else Path(cfg.train.out) / "data" / f"phase_{k}"


def phase_config(cfg: Config, k: int, datasets: list[Path]) -> Config:
    """The plain (phase-less) training config of phase ``k`` (1-based).

    ``datasets`` are the phases' dataset folders (at least the first ``k``); the replay mix
    takes the earlier ones, the fraction split evenly between them.
    """
    ph = cfg.phase[k - 1]
    out = copy.deepcopy(cfg)
    out.phase = []
    out.prepare = type(cfg.prepare)()  # the phase's data is prepared; no stage left in the run
    t = out.train
    for key in PHASE_INHERITED:
        value = getattr(ph, key)
        if value not in (-1, -1.0, ""):
            setattr(t, key, value)
    t.out = str(phase_run_dir(cfg, k))
    if k > 1:
        t.init_from = str(phase_run_dir(cfg, k - 1))
    out.data.path = str(datasets[k - 1])
    out.data.mix = []
    if ph.replay > 0:
        earlier = datasets[: k - 1]
        out.data.mix = [f"{p}:{ph.replay / len(earlier)!r}" for p in earlier]
    try:
        return out.validate()
    except ConfigError as e:
        raise ConfigError(f"phase {k} ({phase_name(ph, k)}): {e}") from None


# --- data --------------------------------------------------------------------------------------


def instruction_documents(inputs: list[str], out_jsonl: Path, template: str = "") -> dict[str, Any]:
    """Mine documented functions of ``inputs`` and write them as plain-text documents.

    Each document is the SFT prompt (``lmlab.data.sft`` template, Alpaca by default) followed by
    the function's source, one ``{"text": ...}`` JSONL row; nothing is masked, so it trains as
    ordinary LM data. Returns the mining report.
    """

    tmpl = resolve_template(template)
    pairs_path = out_jsonl.with_name(out_jsonl.stem + ".pairs.jsonl")
    report = mine_pairs(inputs, pairs_path)
    rows = []
    for line in pairs_path.read_text(encoding="utf-8").splitlines():
        pair = json.loads(line)
        text = tmpl.render(pair["instruction"], pair.get("input", "")) + pair["output"]
        rows.append(json.dumps({"text": text}, ensure_ascii=False))
    if not rows:
        raise DataError(f"{', '.join(inputs)}: no documented function to turn into an instruction")
    atomic_write_text(out_jsonl, "".join(r + "\n" for r in rows))
    return report


def ensure_phase_data(
    cfg: Config, k: int, tok_dir: Path | None, force: bool = False, log=print
) -> Path:
    """Phase ``k``'s dataset folder, prepared (after its transform) when not up to date."""
    ph = cfg.phase[k - 1]
    out = phase_data_dir(cfg, k)
    tag = f"[phase {k} {phase_name(ph, k)}]"
    if ph.data:
        if not (out / "meta.json").is_file():
            raise ConfigError(f"phase.{k}.data: {out} is not a prepared dataset (no meta.json)")
        return out
    if tok_dir is None:
        raise ConfigError(
            f"phase.{k}.input: preparing data needs a tokenizer (tokenizer.out or tokenizer.path)"
        )

    fingerprint = load_tokenizer(tok_dir).fingerprint()
    prep = dataclasses.replace(cfg.prepare, input=list(ph.input), filter=ph.filter, out=str(out))
    settings = {k_: v for k_, v in dataclasses.asdict(prep).items() if k_ not in ("out", "workers")}
    settings["transform"] = ph.transform
    key = stage_key(settings, list(ph.input), {"tokenizer": fingerprint})
    if not force and is_up_to_date(out, key):
        log(f"{tag} data up to date: {out}")
        return out
    if ph.transform != "none":
        # the transformed documents go to a JSONL beside the dataset, prepared from there
        src = out.parent / f"{out.name}.{ph.transform}.jsonl"
        src.parent.mkdir(parents=True, exist_ok=True)
        if ph.transform == "scramble":
            rep = scramble_files(ph.input, src, seed=prep.seed)
            log(
                f"{tag} scrambled {rep['scrambled']}/{rep['files']} files ({rep['statements']} statements) -> {src}"
            )
        else:
            rep = instruction_documents(list(ph.input), src, cfg.sft.template)
            log(
                f"{tag} {rep['pairs']} instruction documents from {rep['files_used']} files -> {src}"
            )
        prep = dataclasses.replace(prep, input=[str(src)], format="jsonl", text_field="text")

    log(f"{tag} preparing data -> {out}")
    meta = prepare_dataset(prep, tokenizer_path=str(tok_dir), progress=cfg.log.progress)
    log(format_report(meta))
    mark_done(out, key, "data")
    return out


def _check_same_tokenizer(datasets: list[Path]) -> dict[str, Any]:
    """Every phase must share one tokenizer (one model); returns the first dataset's meta."""

    metas = [read_meta(d) for d in datasets]
    first = metas[0].get("tokenizer_fingerprint")
    for d, m in zip(datasets[1:], metas[1:], strict=True):
        if m.get("tokenizer_fingerprint") != first:
            raise DataError(
                f"{d / 'meta.json'}: prepared with another tokenizer than {datasets[0]}; phases share one model"
            )
    return metas[0]


# --- training ----------------------------------------------------------------------------------


def forgetting_table(names: list[str], losses: list[list[float | None]]) -> list[dict[str, Any]]:
    """Rows ``{"after": name_k, name_j: val loss, ...}`` plus a ``forgetting`` row: the last
    row's loss on phase j minus the loss right after phase j (positive = forgotten)."""
    rows: list[dict[str, Any]] = []
    for k, row in enumerate(losses):
        rows.append(
            {
                "after": names[k],
                **{n: ("" if v is None else v) for n, v in zip(names, row, strict=True)},
            }
        )
    if len(losses) == len(names) and len(names) > 1:
        last = losses[-1]
        delta = {"after": "forgetting (last - own)"}
        for j, n in enumerate(names):
            own, end = losses[j][j], last[j]
            delta[n] = end - own if own is not None and end is not None else ""
        rows.append(delta)
    return rows


def run_curriculum(cfg: Config, force: bool = False, log=print) -> dict[str, Any]:
    """Run every phase of ``cfg`` (see the module docstring); returns curriculum.json's content."""

    if not cfg.phase:
        raise ConfigError("phase: the recipe has no [[phase]] tables")
    cfg = copy.deepcopy(cfg).validate()
    root = Path(cfg.train.out)
    names = [phase_name(ph, k) for k, ph in enumerate(cfg.phase, 1)]
    if len(set(names)) != len(names):
        raise ConfigError(f"phase.name: names must differ, got {names}")

    check_output(root, "curriculum", whole=False)  # a folder of the user's is refused, not filled
    root.mkdir(parents=True, exist_ok=True)
    write_marker(root, "curriculum")
    # 1) tokenizer and 2) every phase's data (before any training: bad input fails early)
    tok_dir = (
        ensure_tokenizer(cfg, force, log) if (cfg.tokenizer.out or cfg.tokenizer.path) else None
    )
    datasets = [
        ensure_phase_data(cfg, k, tok_dir, force, log) for k in range(1, len(cfg.phase) + 1)
    ]
    meta = _check_same_tokenizer(datasets)
    resolve_vocab_size(cfg.model, meta["vocab_size"])
    if tok_dir is not None and not cfg.data.tokenizer:
        cfg.data.tokenizer = str(tok_dir)

    # 3) train the phases in order, 4) evaluate each on every phase's val split
    losses: list[list[float | None]] = []
    phases: list[dict[str, Any]] = []
    retrained = force
    for k, name in enumerate(names, 1):
        pcfg = phase_config(cfg, k, datasets)
        tag = f"[phase {k} {name}]"
        # after a retrained phase, every later one trains over
        result, trained = _train_phase(cfg, pcfg, k, tag, retrained, log)
        retrained = retrained or trained
        row = _val_losses(cfg, Path(pcfg.train.out), datasets, tag, log)
        losses.append(row)
        log(
            f"{tag} val loss "
            + ", ".join(
                f"{n} {v:.4f}" if v is not None else f"{n} -"
                for n, v in zip(names, row, strict=True)
            )
        )
        phases.append(_phase_record(cfg, pcfg, k, name, datasets, result))
        _write_outputs(root, names, phases, losses, markdown_table)
    return {"phases": phases, "names": names, "val_loss": losses}


def _train_phase(
    cfg: Config, pcfg: Config, k: int, tag: str, retrain: bool, log
) -> tuple[dict[str, Any], bool]:
    """Phase ``k``'s result.json content: kept when up to date (and ``retrain`` is off),
    else trained or resumed; and whether it trained."""

    run_dir = Path(pcfg.train.out)
    plan = plan_run(run_dir, pcfg, force=retrain)
    if plan.action == "skip":
        log(f"{tag} up to date: {run_dir}")
        return read_json(run_dir / "result.json"), False
    resume = plan.resume
    mix = (
        f", replay {cfg.phase[k - 1].replay:g} from {len(pcfg.data.mix)} earlier phase(s)"
        if pcfg.data.mix
        else ""
    )
    log(
        f"{tag} {'resuming' if resume else 'training'} -> {run_dir} ({pcfg.train.max_steps} steps{mix})"
    )
    # the curriculum owns its phase runs: a changed phase is trained over (lmlab's files only)
    result = train(pcfg, resume=resume, force=not resume).as_dict()
    if result["stop_reason"] in ("diverged", "interrupted"):
        raise DataError(
            f"{run_dir}: phase {k} stopped ({result['stop_reason']}); later phases not run"
        )
    return result, True


def _val_losses(
    cfg: Config, run_dir: Path, datasets: list[Path], tag: str, log
) -> list[float | None]:
    """The run's val loss on every phase's val split (None for a dataset without one)."""

    row: list[float | None] = []
    for j, ds in enumerate(datasets, 1):
        try:
            m = evaluate_path(
                str(run_dir),
                data=str(ds),
                batches=cfg.eval.batches or None,
                device=cfg.train.device,
            )
            row.append(float(m["val_loss"]))
        except DataError as e:  # a dataset without a val split: leave the cell empty
            log(f"{tag} no val loss on phase {j}: {e}")
            row.append(None)
    return row


def _phase_record(
    cfg: Config, pcfg: Config, k: int, name: str, datasets: list[Path], result: dict[str, Any]
) -> dict[str, Any]:
    """curriculum.json's entry for phase ``k``."""
    return {
        "phase": k,
        "name": name,
        "run": str(Path(pcfg.train.out)),
        "data": str(datasets[k - 1]),
        "transform": cfg.phase[k - 1].transform,
        "replay": cfg.phase[k - 1].replay,
        "mix": list(pcfg.data.mix),
        "max_steps": pcfg.train.max_steps,
        "lr": pcfg.train.lr,
        "steps": result["steps"],
        "stop_reason": result["stop_reason"],
        "final_train_loss": result["final_train_loss"],
        "final_val_loss": result["final_val_loss"],
        "wall_time_s": result["wall_time_s"],
    }


def _write_outputs(
    root: Path,
    names: list[str],
    phases: list[dict[str, Any]],
    losses: list[list[float | None]],
    markdown_table,
) -> None:
    """curriculum.json and report.md, rewritten after every phase (a crash keeps the rows so far)."""
    root.mkdir(parents=True, exist_ok=True)
    table = forgetting_table(names, losses)
    write_json(
        root / "curriculum.json",
        {"names": names, "phases": phases, "val_loss": losses, "table": table},
    )
    summary = [
        {
            k: p[k]
            for k in (
                "phase",
                "name",
                "transform",
                "replay",
                "steps",
                "stop_reason",
                "final_train_loss",
                "final_val_loss",
            )
        }
        | {"wall s": round(p["wall_time_s"], 1)}
        for p in phases
    ]
    best = [
        min((r[j] for r in losses if r[j] is not None), default=math.nan) for j in range(len(names))
    ]
    parts = [
        "# Curriculum report\n",
        "## Phases\n\n" + markdown_table(summary),
        "## Val loss after each phase (forgetting)\n\n"
        "Rows: the model after phase k. Columns: its val loss on phase j's val split "
        "(fixed eval.batches windows). Below the diagonal is forgetting, above it transfer.\n\n"
        + markdown_table(table, ["after", *names]),
        "Best val loss per phase's data: "
        + ", ".join(f"{n} {b:.4f}" for n, b in zip(names, best, strict=True))
        + "\n",
        "Each phase's own report, samples and checkpoints are in its run folder: "
        + ", ".join(f"`{Path(p['run']).name}/`" for p in phases)
        + ".\n",
    ]
    atomic_write_text(root / "report.md", "\n".join(parts))
