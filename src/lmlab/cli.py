"""The `lmlab` command: parse arguments, then call one stage function.

Each handler imports its stage lazily so `lmlab --help` stays fast. A user error
(:class:`~lmlab.errors.LmlabError`) is printed as one line ``lmlab: error: ...`` with exit
status 2; Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lmlab.config import PrepareConfig, SampleConfig
from lmlab.errors import LmlabError

EXAMPLES = {
    "demo": "lmlab demo --minutes 3 --out runs/demo",
    "run": "lmlab run recipes/shakespeare-char.toml --train.max_steps=500",
    "tokenizer train": "lmlab tokenizer train --input data/*.txt --vocab-size 8192 --special-token '<|endoftext|>' --out tok/",
    "tokenizer stats": "lmlab tokenizer stats --tokenizer tok/ --input data/valid.txt",
    "data prepare": "lmlab data prepare --input src/ --tokenizer tok/ --out ds/ --filter code --workers 2",
    "train": "lmlab train recipes/tinystories.toml --train.lr=1e-3 --out runs/ts",
    "eval": "lmlab eval runs/ts --json\n  lmlab eval runs/demo --code humaneval --samples 10 --k 1,10 --allow-code-execution",
    "sample": "lmlab sample runs/ts --prompt 'Once upon a time' --num-samples 3 --top-p 0.9",
    "chat": "lmlab chat runs/ts-sft",
    "sft": "lmlab sft recipes/sft-mbpp.toml --train.init_from=runs/demo",
    "export": "lmlab export runs/ts --format hf --out hf/ts\n  lmlab export runs/ts --format gguf --dtype f16 --out ts.gguf",
    "sweep": "lmlab sweep sweeps/lr.toml",
    "compare": "lmlab compare runs/a runs/b --out cmp/",
    "account": "lmlab account recipes/gpt2-small.toml --seq-len 1024 --batch-size 8 --json",
}


def _parser(sub: Any, name: str, help: str, **kw: Any) -> argparse.ArgumentParser:
    example = EXAMPLES.get(name, "")
    p = sub.add_parser(
        name.split()[-1],
        help=help,
        description=help,
        epilog=f"example:\n  {example}" if example else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        **kw,
    )
    return p


def add_field_flags(
    parser: argparse.ArgumentParser,
    cls: type,
    names: Sequence[str],
    custom: dict[str, dict[str, Any]] | None = None,
) -> None:
    """One ``--flag`` per field of the config dataclass ``cls`` named in ``names`` (litgpt's way):
    type, default, choices and help come from the field, so the flag and the recipe key cannot
    disagree. ``custom[name]`` adds or replaces argparse keywords (required, type, metavar...)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    types = typing.get_type_hints(cls)
    for name in names:
        f = fields[name]
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        kw: dict[str, Any] = {"default": default, "help": f.metadata["help"].replace("%", "%%")}
        if typing.get_origin(types[name]) is list:
            kw.update(nargs="+", type=typing.get_args(types[name])[0])
        else:
            kw["type"] = types[name]
            kw["help"] += f" (default {default!r})" if default != "" else ""
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        kw.update((custom or {}).get(name, {}))
        parser.add_argument("--" + name.replace("_", "-"), **kw)


def fields_from_args(
    cls: type, args: argparse.Namespace, names: Sequence[str], **values: Any
) -> Any:
    """An instance of ``cls`` from the flags :func:`add_field_flags` made (others keep their default)."""
    return cls(**{name: getattr(args, name) for name in names}, **values)


# The recipe keys `lmlab data prepare`, `lmlab sample` and `lmlab chat` take as flags.
PREPARE_FLAGS = (
    "input",
    "filter",
    "format",
    "text_field",
    "separator",
    "val_fraction",
    "split",
    "workers",
    "seed",
    "errors",
    "max_docs",
    "max_bytes",
)
SAMPLE_FLAGS = (
    "prompt",
    "num_samples",
    "max_new_tokens",
    "temperature",
    "top_k",
    "top_p",
    "repetition_penalty",
    "seed",
)
CHAT_FLAGS = ("temperature", "max_new_tokens")


def _byte_count(text: str) -> int:
    """``500M`` / ``2G`` / ``64K`` / ``1000`` as bytes (powers of 1000, like the sizes printed)."""
    units = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    t = text.strip().upper().removesuffix("B")
    num, unit = (t[:-1], t[-1]) if t and t[-1] in units else (t, "")
    try:
        value = float(num) * units[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a byte count: {text!r} (e.g. 1000, 64K, 500M, 2G)"
        ) from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return int(value)


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def _check_flags(section: Any, prefix: str) -> None:
    """Validate a config section built from flags; the error names the flag (--workers), not the key."""
    from lmlab.config import check_section
    from lmlab.errors import ConfigError

    try:
        check_section(section, prefix)
    except ConfigError as e:
        key, _, why = str(e).partition(": ")
        raise ConfigError(f"--{key.removeprefix(prefix + '.').replace('_', '-')}: {why}") from None


def _own_folder(out: str, flag: str = "--out") -> Path:
    """``out`` as a folder lmlab writes whole: it needs a name of its own (not ., .. or /)."""
    import os

    if os.path.basename(os.path.normpath(out)) in ("", ".", ".."):
        what = (
            "a filesystem root"
            if os.path.normpath(out) == os.sep
            else "the working directory or a parent of it"
        )
        raise LmlabError(
            f"{flag} {out}: names {what}, not a folder of its own; give a new folder such as {flag} {out.rstrip('/')}/out"
        )
    return Path(out)


# --- handlers -------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace, overrides: list[str]) -> int:
    from lmlab.demo import run_demo

    run_demo(minutes=args.minutes, out=Path(args.out), overrides=overrides)
    return 0


def cmd_run(args: argparse.Namespace, overrides: list[str]) -> int:
    from lmlab.pipeline import run_recipe

    run_recipe(Path(args.recipe), overrides=overrides, force=args.force)
    return 0


def cmd_tokenizer_train(args: argparse.Namespace, overrides: list[str]) -> int:
    from lmlab.tokenizer import train_tokenizer

    tok = train_tokenizer(
        inputs=args.input,
        vocab_size=args.vocab_size,
        out=_own_folder(args.out),
        kind=args.kind,
        special_tokens=args.special_token or [],
    )
    print(f"tokenizer: {args.kind}, vocab {len(tok.vocab)} -> {args.out}")
    return 0


def cmd_tokenizer_stats(args: argparse.Namespace, overrides: list[str]) -> int:
    from lmlab.tokenizer import load_tokenizer
    from lmlab.tokenizer.stats import format_stats, tokenizer_stats

    stats = tokenizer_stats(load_tokenizer(args.tokenizer), args.input)
    _print_json(stats) if args.json else print(format_stats(stats))
    return 0


def cmd_data_prepare(args: argparse.Namespace, overrides: list[str]) -> int:
    from lmlab.data.prepare import format_report, prepare_dataset

    pcfg = fields_from_args(PrepareConfig, args, PREPARE_FLAGS, out=str(_own_folder(args.out)))
    _check_flags(pcfg, "prepare")
    meta = prepare_dataset(pcfg, tokenizer_path=args.tokenizer, progress=not args.no_progress)
    _print_json(meta) if args.json else print(format_report(meta))
    return 0


def cmd_train(args: argparse.Namespace, overrides: list[str]) -> int:
    from lmlab.runs import load_run_config

    if args.resume and args.force:
        raise LmlabError("--resume and --force: give one (continue the run, or start it over)")
    if args.out:
        overrides = [*overrides, f"train.out={args.out}"]
    cfg = load_run_config(args.config, overrides)  # a run's own config.toml follows a moved run
    if cfg.model.arch == "encdec":  # pairs in, through the same loop
        from lmlab.train.encdec import run_encdec

        run_encdec(cfg, resume=args.resume, force=args.force)
        return 0
    from lmlab.train.loop import train

    train(cfg, resume=args.resume, force=args.force)
    return 0


def cmd_eval(args: argparse.Namespace, overrides: list[str]) -> int:
    if args.code:
        from lmlab.eval.passk import code_eval_command, format_code_eval

        result = code_eval_command(
            args.run,
            args.code,
            samples=args.samples,
            k=args.k,
            allow_code_execution=args.allow_code_execution,
            temperature=args.temperature,
            max_new_tokens=args.max_new_tokens,
            tasks=args.tasks,
            problems=args.problems,
            seed=args.seed,
        )
        _print_json(result) if args.json else print(format_code_eval(result))
        return 0
    from lmlab.eval.metrics import evaluate_path, format_metrics

    result = evaluate_path(args.run, data=args.data, batches=args.batches)
    _print_json(result) if args.json else print(format_metrics(result))
    return 0


def cmd_sample(args: argparse.Namespace, overrides: list[str]) -> int:
    from lmlab.sample import sample_command

    _check_flags(fields_from_args(SampleConfig, args, SAMPLE_FLAGS), "sample")
    sample_command(
        args.run,
        args.prompt,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        stop=args.stop,
        num_samples=args.num_samples,
        seed=args.seed,
        stream=not args.no_stream,
        as_json=args.json,
    )
    return 0


def cmd_chat(args: argparse.Namespace, overrides: list[str]) -> int:
    from lmlab.chat import chat_loop

    _check_flags(fields_from_args(SampleConfig, args, CHAT_FLAGS), "sample")
    chat_loop(args.run, temperature=args.temperature, max_new_tokens=args.max_new_tokens)
    return 0


def cmd_sft(args: argparse.Namespace, overrides: list[str]) -> int:
    from lmlab.config import load_config
    from lmlab.train.sft import run_sft

    cfg = load_config(args.config, overrides)
    run_sft(cfg, resume=args.resume, force=args.force)
    return 0


def cmd_export(args: argparse.Namespace, overrides: list[str]) -> int:
    if args.format == "gguf":
        from lmlab.export.gguf import export_gguf

        export_gguf(args.run, Path(args.out), args.dtype)
    elif args.format == "hf":
        from lmlab.export import export_hf

        if args.dtype != "f32":
            raise LmlabError(
                f"--dtype {args.dtype}: the Hugging Face export is float32 (--dtype is for gguf)"
            )
        export_hf(args.run, _own_folder(args.out))
    else:
        raise LmlabError(f"--format: 'hf' or 'gguf', got {args.format!r}")
    print(f"exported {args.run} -> {args.out}")
    return 0


def cmd_sweep(args: argparse.Namespace, overrides: list[str]) -> int:
    from lmlab.experiments.sweep import run_sweep

    seeds = args.seeds
    if args.dry_run:
        from lmlab.experiments.dryrun import dry_run

        dry_run(Path(args.sweep), overrides=overrides, seeds=seeds)
        return 0
    run_sweep(Path(args.sweep), overrides=overrides, seeds=seeds)
    return 0


def cmd_compare(args: argparse.Namespace, overrides: list[str]) -> int:
    from lmlab.experiments.compare import compare_runs

    compare_runs([Path(r) for r in args.runs], out=Path(args.out) if args.out else None)
    return 0


def cmd_account(args: argparse.Namespace, overrides: list[str]) -> int:
    from lmlab.account_report import account_command

    account_command(
        args.config,
        overrides,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        memory_gb=args.memory_gb,
        tokens=args.tokens,
        mfu=args.mfu,
        peak_tflops=args.peak_tflops,
        as_json=args.json,
    )
    return 0


# --- parser ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lmlab",
        description="Train, evaluate, fine-tune and export small language models from raw files.",
        epilog="Config overrides: any recipe key as --section.key=value, e.g. --train.lr=3e-4.\n"
        "Run `lmlab <command> --help` for examples; `lmlab config-keys` lists every key.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    d = _parser(
        sub, "demo", "the main job: tokenizer, data, training, eval and report on the Python stdlib"
    )
    d.add_argument("--minutes", type=float, default=4.0, help="training time budget (default 4)")
    d.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    d.set_defaults(func=cmd_demo)

    r = _parser(sub, "run", "run every stage a recipe declares, skipping stages already up to date")
    r.add_argument("recipe", help="a TOML recipe")
    r.add_argument("--force", action="store_true", help="redo every stage even if up to date")
    r.set_defaults(func=cmd_run)

    tok = sub.add_parser("tokenizer", help="train a tokenizer or measure one")
    tsub = tok.add_subparsers(dest="tok_command", metavar="ACTION")
    tsub.required = True
    tt = _parser(tsub, "tokenizer train", "train a byte-level BPE or char-level tokenizer")
    tt.add_argument("--input", nargs="+", required=True, help="files, folders or globs")
    tt.add_argument("--vocab-size", type=int, required=True, help="target vocabulary size")
    tt.add_argument("--special-token", action="append", help="a special token (repeatable)")
    tt.add_argument("--kind", choices=("bpe", "char", "symbolic"), default="bpe")
    tt.add_argument("--out", required=True, help="tokenizer folder to write")
    tt.set_defaults(func=cmd_tokenizer_train)
    ts = _parser(tsub, "tokenizer stats", "bytes per token and encode speed on given files")
    ts.add_argument(
        "--tokenizer", required=True, help="tokenizer folder, tokenizer.json or GPT-2 files folder"
    )
    ts.add_argument("--input", nargs="+", required=True, help="files, folders or globs")
    ts.add_argument("--json", action="store_true", help="print JSON")
    ts.set_defaults(func=cmd_tokenizer_stats)

    data = sub.add_parser("data", help="prepare token shards")
    dsub = data.add_subparsers(dest="data_command", metavar="ACTION")
    dsub.required = True
    dp = _parser(dsub, "data prepare", "filter, tokenize and pack documents into train/val shards")
    add_field_flags(
        dp,
        PrepareConfig,
        PREPARE_FLAGS,
        {
            "input": {"required": True},
            "max_docs": {"metavar": "N"},
            "max_bytes": {
                "type": _byte_count,
                "metavar": "B",
                "help": "use only the first documents totalling at most B bytes of text, e.g. 500M (0: all)",
            },
        },
    )
    dp.add_argument("--tokenizer", required=True, help="tokenizer folder")
    dp.add_argument("--out", required=True, help="dataset folder to write")
    dp.add_argument("--no-progress", action="store_true")
    dp.add_argument("--json", action="store_true", help="print meta.json")
    dp.set_defaults(func=cmd_data_prepare)

    t = _parser(sub, "train", "train a model from a TOML config")
    t.add_argument("config", help="TOML config")
    t.add_argument("--out", default="", help="run folder (overrides train.out)")
    t.add_argument(
        "--resume", action="store_true", help="continue from the run's latest checkpoint"
    )
    t.add_argument(
        "--force",
        action="store_true",
        help="start over a run folder that holds a run (deletes its checkpoints)",
    )
    t.set_defaults(func=cmd_train)

    e = _parser(
        sub,
        "eval",
        "loss, perplexity, accuracy and bits per byte of a run or checkpoint; pass@k with --code",
    )
    e.add_argument("run", help="run folder or checkpoint folder")
    e.add_argument("--data", default=None, help="dataset folder (default: the run's)")
    e.add_argument("--batches", type=int, default=None, help="val batches (default: whole split)")
    e.add_argument("--json", action="store_true")
    e.add_argument(
        "--code",
        choices=("humaneval", "mbpp"),
        default=None,
        help="pass@k on HumanEval or MBPP (test split) instead: sample, run in the sandbox, write RUN/eval/",
    )
    e.add_argument("--samples", type=int, default=1, help="--code: completions per task")
    e.add_argument(
        "--k", default="1", help="--code: comma-separated k values for pass@k, each <= --samples"
    )
    e.add_argument(
        "--allow-code-execution",
        action="store_true",
        help="--code: run the model's code in lmlab's sandbox (only on a machine you can afford to lose)",
    )
    e.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="--code: sampling temperature (default 0, greedy, for one sample; 0.8 for more)",
    )
    e.add_argument("--max-new-tokens", type=int, default=256, help="--code: tokens per completion")
    e.add_argument("--tasks", type=int, default=0, help="--code: only the first N tasks (0: all)")
    e.add_argument(
        "--problems",
        default=None,
        help="--code: HumanEval.jsonl(.gz) or mbpp.jsonl (default: looked for in the working folder)",
    )
    e.add_argument("--seed", type=int, default=0, help="--code: sampling seed")
    e.set_defaults(func=cmd_eval)

    s = _parser(sub, "sample", "generate text from a run or checkpoint")
    s.add_argument("run", help="run folder or checkpoint folder")
    add_field_flags(s, SampleConfig, SAMPLE_FLAGS)
    s.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    s.add_argument("--no-stream", action="store_true", help="print whole samples at the end")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_sample)

    c = _parser(sub, "chat", "talk to a run interactively (/reset, /temp T, /quit)")
    c.add_argument("run", help="run folder or checkpoint folder")
    add_field_flags(c, SampleConfig, CHAT_FLAGS)
    c.set_defaults(func=cmd_chat)

    f = _parser(sub, "sft", "instruction fine-tuning with response-only loss")
    f.add_argument("config", help="TOML config")
    f.add_argument(
        "--resume",
        action="store_true",
        help="continue the fine-tuning run from its latest checkpoint",
    )
    f.add_argument(
        "--force",
        action="store_true",
        help="start over a run folder that holds a run (deletes its checkpoints)",
    )
    f.set_defaults(func=cmd_sft)

    x = _parser(
        sub, "export", "write a Hugging Face transformers folder or a GGUF file for llama.cpp"
    )
    x.add_argument("run", help="run folder or checkpoint folder")
    x.add_argument(
        "--format", default="hf", help="hf (a transformers folder) or gguf (one file for llama.cpp)"
    )
    x.add_argument("--out", required=True)
    x.add_argument("--dtype", default="f32", help="gguf weights: f32, f16 or q8_0 (default f32)")
    x.set_defaults(func=cmd_export)

    w = _parser(sub, "sweep", "run a grid or list of overrides over a base recipe")
    w.add_argument("sweep", help="sweep TOML")
    w.add_argument(
        "--seeds",
        type=int,
        default=None,
        help="runs per point (train.seed + 0..N-1); replaces the file's seeds",
    )
    w.add_argument(
        "--dry-run",
        action="store_true",
        help="build and check every point's config and model (meta device), train nothing",
    )
    w.set_defaults(func=cmd_sweep)

    cm = _parser(sub, "compare", "tables and overlaid curves for existing runs")
    cm.add_argument("runs", nargs="+")
    cm.add_argument("--out", default="")
    cm.set_defaults(func=cmd_compare)

    a = _parser(sub, "account", "parameters, FLOPs, memory and time of a config")
    a.add_argument("config", help="TOML config")
    a.add_argument("--seq-len", type=int, default=0, help="default: model.context_length")
    a.add_argument("--batch-size", type=int, default=0, help="default: train.batch_size")
    a.add_argument(
        "--memory-gb", type=float, default=0.0, help="find the largest batch fitting this memory"
    )
    a.add_argument(
        "--tokens", type=float, default=0.0, help="estimate time to train this many tokens"
    )
    a.add_argument("--mfu", type=float, default=0.4)
    a.add_argument(
        "--peak-tflops", type=float, default=0.0, help="default: the device's known peak"
    )
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=cmd_account)

    k = sub.add_parser("config-keys", help="list every config key with its default and meaning")
    k.set_defaults(
        func=lambda args, ov: print(__import__("lmlab.config").config.describe_fields()) or 0
    )
    return p


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """Separate ``--section.key=value`` overrides from ordinary arguments."""
    rest, overrides = [], []
    for a in argv:
        head = a[2:].split("=", 1)[0] if a.startswith("--") else ""
        if "." in head and "=" in a:
            overrides.append(a[2:])
        else:
            rest.append(a)
    return rest, overrides


def _output_of(args: argparse.Namespace, overrides: list[str]) -> str:
    """The folder a command writes (for an OSError that carries no file name), or ''."""
    for item in reversed(overrides):
        if item.startswith("train.out="):
            return item.split("=", 1)[1]
    return str(getattr(args, "out", "") or "")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    rest, overrides = split_overrides(argv)
    parser = build_parser()
    args = parser.parse_args(rest)
    func: Callable[[argparse.Namespace, list[str]], int] = args.func
    try:
        return int(func(args, overrides) or 0)
    except LmlabError as e:
        print(f"lmlab: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # full disk, read-only or unwritable folder, ...: one line naming the path
        from lmlab.errors import os_error_message

        print(f"lmlab: error: {os_error_message(e, _output_of(args, overrides))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lmlab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
