"""The `lmlab` command: parse arguments, then call one stage function.

Each handler imports its stage lazily so `lmlab --help` stays fast. A user error
(:class:`~lmlab.errors.LmlabError`) is printed as one line ``lmlab: error: ...`` with exit
status 2; Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lmlab import cli_parser
from lmlab.cli_parser import (
    CHAT_FLAGS,
    EXAMPLES,
    PREPARE_FLAGS,
    SAMPLE_FLAGS,
    add_field_flags,
)
from lmlab.config import PrepareConfig, SampleConfig, check_section, describe_fields, load_config
from lmlab.errors import ConfigError, LmlabError, os_error_message
from lmlab.outputs import refuse_protected

# the parser's names, importable from here as before the parser had its own module
__all__ = [
    "CHAT_FLAGS",
    "EXAMPLES",
    "PREPARE_FLAGS",
    "SAMPLE_FLAGS",
    "add_field_flags",
    "build_parser",
    "fields_from_args",
    "main",
    "split_overrides",
]


def fields_from_args(
    cls: type, args: argparse.Namespace, names: Sequence[str], **values: Any
) -> Any:
    """An instance of ``cls`` from the flags :func:`add_field_flags` made (others keep their default)."""
    return cls(**{name: getattr(args, name) for name in names}, **values)


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def _check_flags(section: Any, prefix: str) -> None:
    """Validate a config section built from flags; the error names the flag (--workers), not the key."""
    try:
        check_section(section, prefix)
    except ConfigError as e:
        key, _, why = str(e).partition(": ")
        raise ConfigError(f"--{key.removeprefix(prefix + '.').replace('_', '-')}: {why}") from None


def _own_folder(out: str, flag: str = "--out") -> Path:
    """``out`` as a folder lmlab writes whole, checked before any work by the library's guard
    (not the working directory, a parent of it, home or a root), the error naming ``flag``."""
    refuse_protected(out, flag)
    return Path(out)


# --- handlers -------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace, overrides: list[str]) -> int:
    from lmlab.demo import run_demo

    run_demo(minutes=args.minutes, out=_own_folder(args.out), overrides=overrides)
    return 0


def cmd_run(args: argparse.Namespace, overrides: list[str]) -> int:
    from lmlab.pipeline import run_recipe

    run_recipe(Path(args.recipe), overrides=overrides, force=args.force)
    return 0


def cmd_tokenizer_train(args: argparse.Namespace, overrides: list[str]) -> int:
    from lmlab.tokenizer import train_tokenizer
    from lmlab.tokenizer.train import filter_summary

    tok = train_tokenizer(
        inputs=args.input,
        vocab_size=args.vocab_size,
        out=_own_folder(args.out),
        kind=args.kind,
        special_tokens=args.special_token or [],
        exclude=args.exclude,
        filter=args.filter,
    )
    print(f"tokenizer: {args.kind}, vocab {len(tok.vocab)} -> {args.out}")
    if summary := filter_summary(tok):
        print(f"tokenizer: {summary}")
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
        overrides = [*overrides, f"train.out={_own_folder(args.out)}"]
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

    compare_runs([Path(r) for r in args.runs], out=_own_folder(args.out) if args.out else None)
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


def cmd_config_keys(args: argparse.Namespace, overrides: list[str]) -> int:
    print(describe_fields())
    return 0


# --- parser ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand (:mod:`lmlab.cli_parser`), each with its handler."""
    p, sub = cli_parser.root_parser()
    cli_parser.add_demo(sub).set_defaults(func=cmd_demo)
    cli_parser.add_run(sub).set_defaults(func=cmd_run)
    tsub = cli_parser.tokenizer_group(sub)
    cli_parser.add_tokenizer_train(tsub).set_defaults(func=cmd_tokenizer_train)
    cli_parser.add_tokenizer_stats(tsub).set_defaults(func=cmd_tokenizer_stats)
    cli_parser.add_data_prepare(cli_parser.data_group(sub)).set_defaults(func=cmd_data_prepare)
    cli_parser.add_train(sub).set_defaults(func=cmd_train)
    cli_parser.add_eval(sub).set_defaults(func=cmd_eval)
    cli_parser.add_sample(sub).set_defaults(func=cmd_sample)
    cli_parser.add_chat(sub).set_defaults(func=cmd_chat)
    cli_parser.add_sft(sub).set_defaults(func=cmd_sft)
    cli_parser.add_export(sub).set_defaults(func=cmd_export)
    cli_parser.add_sweep(sub).set_defaults(func=cmd_sweep)
    cli_parser.add_compare(sub).set_defaults(func=cmd_compare)
    cli_parser.add_account(sub).set_defaults(func=cmd_account)
    cli_parser.add_config_keys(sub).set_defaults(func=cmd_config_keys)
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


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush into the closed pipe does
    not print a second error at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


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
    except BrokenPipeError:
        # the reader went away (`lmlab config-keys | head`): not an error to report
        _silence_stdout()
        return 128 + 13  # as a process stopped by SIGPIPE
    except OSError as e:  # full disk, read-only or unwritable folder, ...: one line naming the path
        print(f"lmlab: error: {os_error_message(e, _output_of(args, overrides))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lmlab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
