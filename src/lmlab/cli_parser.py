"""The `lmlab` argument parser: one function per subcommand's parser (litgpt's way).

Each ``add_*`` function adds one subcommand to ``sub`` and returns its parser; :mod:`lmlab.cli`
attaches the handlers. The ``data prepare``, ``sample`` and ``chat`` flags are built from the
config's dataclass fields (:func:`add_field_flags`), so a flag and its recipe key cannot disagree.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Sequence
from typing import Any

from lmlab.config import PrepareConfig, SampleConfig
from lmlab.data.filters import FILTERS

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


def command_parser(sub: Any, name: str, help: str, **kw: Any) -> argparse.ArgumentParser:
    """A subcommand's parser with its help as description and its example as epilog."""
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


class ListFlag(argparse.Action):
    """A ``nargs="+"`` flag that may be repeated: ``--exclude A --exclude B`` is ``[A, B]``
    (argparse's plain store keeps only the last, silently dropping A). The first use replaces
    the default list; later uses add to it."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: Any,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        current = getattr(namespace, self.dest, None)
        kept = [] if current is None or current is self.default else list(current)
        setattr(namespace, self.dest, kept + list(values))


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
            kw.update(nargs="+", action=ListFlag, type=typing.get_args(types[name])[0])
        else:
            kw["type"] = types[name]
            kw["help"] += f" (default {default!r})" if default != "" else ""
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        kw.update((custom or {}).get(name, {}))
        parser.add_argument("--" + name.replace("_", "-"), **kw)


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
    "exclude",
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


def byte_count(text: str) -> int:
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


def root_parser() -> tuple[argparse.ArgumentParser, Any]:
    """The `lmlab` parser and its subcommand group."""
    p = argparse.ArgumentParser(
        prog="lmlab",
        description="Train, evaluate, fine-tune and export small language models from raw files.",
        epilog="Config overrides: any recipe key as --section.key=value, e.g. --train.lr=3e-4.\n"
        "Run `lmlab <command> --help` for examples; `lmlab config-keys` lists every key.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    return p, sub


def add_demo(sub: Any) -> argparse.ArgumentParser:
    d = command_parser(
        sub, "demo", "the main job: tokenizer, data, training, eval and report on the Python stdlib"
    )
    d.add_argument(
        "--minutes",
        type=float,
        default=5.0,
        help="time budget of the whole demo, data to report (default 5)",
    )
    d.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    return d


def add_run(sub: Any) -> argparse.ArgumentParser:
    r = command_parser(
        sub, "run", "run every stage a recipe declares, skipping stages already up to date"
    )
    r.add_argument("recipe", help="a TOML recipe")
    r.add_argument("--force", action="store_true", help="redo every stage even if up to date")
    return r


def tokenizer_group(sub: Any) -> Any:
    """`lmlab tokenizer ACTION`: the group its train and stats parsers go into."""
    tok = sub.add_parser("tokenizer", help="train a tokenizer or measure one")
    tsub = tok.add_subparsers(dest="tok_command", metavar="ACTION")
    tsub.required = True
    return tsub


def add_tokenizer_train(tsub: Any) -> argparse.ArgumentParser:
    tt = command_parser(tsub, "tokenizer train", "train a byte-level BPE or char-level tokenizer")
    tt.add_argument(
        "--input", nargs="+", action=ListFlag, required=True, help="files, folders or globs"
    )
    tt.add_argument("--vocab-size", type=int, required=True, help="target vocabulary size")
    tt.add_argument("--special-token", action="append", help="a special token (repeatable)")
    tt.add_argument("--kind", choices=("bpe", "char", "symbolic"), default="bpe")
    tt.add_argument(
        "--exclude",
        nargs="+",
        action=ListFlag,
        default=[],
        metavar="GLOB",
        help="leave out files whose path below the input folder matches, e.g. '*/tests/*'",
    )
    tt.add_argument(
        "--filter",
        choices=FILTERS,
        default="none",
        help="train only on the files this quality filter keeps (as data prepare --filter)",
    )
    tt.add_argument("--out", required=True, help="tokenizer folder to write")
    return tt


def add_tokenizer_stats(tsub: Any) -> argparse.ArgumentParser:
    ts = command_parser(tsub, "tokenizer stats", "bytes per token and encode speed on given files")
    ts.add_argument(
        "--tokenizer", required=True, help="tokenizer folder, tokenizer.json or GPT-2 files folder"
    )
    ts.add_argument(
        "--input", nargs="+", action=ListFlag, required=True, help="files, folders or globs"
    )
    ts.add_argument("--json", action="store_true", help="print JSON")
    return ts


def data_group(sub: Any) -> Any:
    """`lmlab data ACTION`: the group its prepare parser goes into."""
    data = sub.add_parser("data", help="prepare token shards")
    dsub = data.add_subparsers(dest="data_command", metavar="ACTION")
    dsub.required = True
    return dsub


def add_data_prepare(dsub: Any) -> argparse.ArgumentParser:
    dp = command_parser(
        dsub, "data prepare", "filter, tokenize and pack documents into train/val shards"
    )
    add_field_flags(
        dp,
        PrepareConfig,
        PREPARE_FLAGS,
        {
            "input": {"required": True},
            "max_docs": {"metavar": "N"},
            "max_bytes": {
                "type": byte_count,
                "metavar": "B",
                "help": "use only the first documents totalling at most B bytes of text, e.g. 500M (0: all)",
            },
        },
    )
    dp.add_argument("--tokenizer", required=True, help="tokenizer folder")
    dp.add_argument("--out", required=True, help="dataset folder to write")
    dp.add_argument("--no-progress", action="store_true")
    dp.add_argument("--json", action="store_true", help="print meta.json")
    return dp


def add_train(sub: Any) -> argparse.ArgumentParser:
    t = command_parser(sub, "train", "train a model from a TOML config")
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
    return t


def add_eval(sub: Any) -> argparse.ArgumentParser:
    e = command_parser(
        sub,
        "eval",
        "loss, perplexity, accuracy and bits per byte of a run or checkpoint; pass@k with --code",
    )
    e.add_argument("run", help="run folder or checkpoint folder")
    e.add_argument("--data", default=None, help="dataset folder (default: the run's)")
    e.add_argument("--batches", type=int, default=None, help="val batches (default: whole split)")
    e.add_argument("--json", action="store_true")
    _add_code_eval_flags(e)
    return e


def _add_code_eval_flags(e: argparse.ArgumentParser) -> None:
    """`lmlab eval --code`: pass@k on a benchmark instead of the loss."""
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


def add_sample(sub: Any) -> argparse.ArgumentParser:
    s = command_parser(sub, "sample", "generate text from a run or checkpoint")
    s.add_argument("run", help="run folder or checkpoint folder")
    add_field_flags(s, SampleConfig, SAMPLE_FLAGS)
    s.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    s.add_argument("--no-stream", action="store_true", help="print whole samples at the end")
    s.add_argument("--json", action="store_true")
    return s


def add_chat(sub: Any) -> argparse.ArgumentParser:
    c = command_parser(sub, "chat", "talk to a run interactively (/reset, /temp T, /quit)")
    c.add_argument("run", help="run folder or checkpoint folder")
    add_field_flags(c, SampleConfig, CHAT_FLAGS)
    return c


def add_sft(sub: Any) -> argparse.ArgumentParser:
    f = command_parser(sub, "sft", "instruction fine-tuning with response-only loss")
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
    return f


def add_export(sub: Any) -> argparse.ArgumentParser:
    x = command_parser(
        sub, "export", "write a Hugging Face transformers folder or a GGUF file for llama.cpp"
    )
    x.add_argument("run", help="run folder or checkpoint folder")
    x.add_argument(
        "--format", default="hf", help="hf (a transformers folder) or gguf (one file for llama.cpp)"
    )
    x.add_argument("--out", required=True)
    x.add_argument("--dtype", default="f32", help="gguf weights: f32, f16 or q8_0 (default f32)")
    return x


def add_sweep(sub: Any) -> argparse.ArgumentParser:
    w = command_parser(sub, "sweep", "run a grid or list of overrides over a base recipe")
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
    return w


def add_compare(sub: Any) -> argparse.ArgumentParser:
    cm = command_parser(sub, "compare", "tables and overlaid curves for existing runs")
    cm.add_argument("runs", nargs="+")
    cm.add_argument("--out", default="")
    return cm


def add_account(sub: Any) -> argparse.ArgumentParser:
    a = command_parser(sub, "account", "parameters, FLOPs, memory and time of a config")
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
    return a


def add_config_keys(sub: Any) -> argparse.ArgumentParser:
    return sub.add_parser("config-keys", help="list every config key with its default and meaning")
