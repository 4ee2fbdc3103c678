"""The `lmlab account` report: :func:`lmlab.accounting.account`'s figures as tables, or JSON."""

from __future__ import annotations

import json
from typing import Any

from lmlab.accounting import account
from lmlab.config import load_config
from lmlab.errors import LmlabError


def _fmt_count(x: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.2f}{unit}"
    return f"{x:.0f}"


def _fmt_bytes(x: float) -> str:
    return f"{x / 2**30:.2f} GiB" if x >= 2**28 else f"{x / 2**20:.1f} MiB"


def _fmt_time(s: float) -> str:
    if s < 120:
        return f"{s:.1f} s"
    if s < 2 * 3600:
        return f"{s / 60:.1f} min"
    if s < 2 * 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for j, r in enumerate(rows):
        cells = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(cells).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_report(res: dict[str, Any]) -> str:
    p = res["params"]
    total = p["total"]
    rows = [("parameters", "count", "share")]
    for k in (
        "token_embedding",
        "position_embedding",
        "attention",
        "mlp",
        "norms",
        "head",
        "encoder_proj",
    ):
        if k not in p:
            continue
        label = k + (" (tied)" if k == "head" and p["tied"] else "")
        rows.append((label, f"{p[k]:,}", f"{p[k] / total:.1%}"))
    rows.append(("total", f"{total:,}", f"({_fmt_count(total)})"))
    rows.append(("non-embedding", f"{p['non_embedding']:,}", f"({_fmt_count(p['non_embedding'])})"))
    out = [
        f"arch {res['arch']}, vocab {res['vocab_size']}, seq_len {res['seq_len']}",
        f"vocabulary from {res['vocab_source']}",
    ]
    if res["model_source"] != "config":
        out.append(f"model from {res['model_source']}")
    if res["arch"] == "encdec":
        out.append(
            "(the trained decoder only: the frozen encoder's parameters and forward pass are not counted)"
        )
    out += ["", _table(rows), ""]
    rows = [("forward FLOPs per token", "FLOPs", "share")]
    for k, v in res["forward_flops"].items():
        rows.append((k, _fmt_count(v["flops"]), f"{v['share']:.1%}"))
    rows.append(("total", _fmt_count(res["forward_flops_total"]), ""))
    rows.append(("training (3x forward)", _fmt_count(res["training_flops_per_token"]), ""))
    rows.append(("6N for comparison", _fmt_count(res["six_n"]), ""))
    rows.append(
        (
            f"forward per sequence ({res['seq_len']} tokens)",
            _fmt_count(res["forward_flops_per_sequence"]),
            "",
        )
    )
    rows.append(("training per sequence", _fmt_count(res["training_flops_per_sequence"]), ""))
    out += [_table(rows), "(matmuls only; attention over the full T x T, no causal halving)", ""]
    mem = res["memory_bytes"]
    rows = [
        (
            f"training memory, batch {res['batch_size']} x {res['seq_len']}, {res['compute_dtype']}",
            "bytes",
        )
    ]
    for k in ("weights", "gradients", "optimizer", "activations", "total"):
        rows.append((k, _fmt_bytes(mem[k])))
    out += [
        _table(rows),
        "(AdamW, fp32 weights/grads/moments; excludes CUDA context and fragmentation)",
        "",
    ]
    if "max_batch_size" in res:
        out.append(
            f"largest batch in {res['memory_gb']:g} GiB at seq_len {res['seq_len']}: {res['max_batch_size']}"
        )
    if "time" in res:
        tm = res["time"]
        out.append(
            f"time for {_fmt_count(tm['tokens'])} tokens at MFU {tm['mfu']:.0%} of "
            f"{res['peak_flops'] / 1e12:g} TFLOP/s ({res['device']}): {_fmt_time(tm['seconds'])}"
        )
    return "\n".join(out).rstrip() + "\n"


def account_command(
    config: str,
    overrides: list[str],
    *,
    seq_len: int = 0,
    batch_size: int = 0,
    memory_gb: float = 0.0,
    tokens: float = 0.0,
    mfu: float = 0.4,
    peak_tflops: float = 0.0,
    as_json: bool = False,
) -> None:
    """`lmlab account CONFIG.toml [--seq-len S] [--batch-size B] [--memory-gb G] [--tokens N] ...`."""
    cfg = load_config(config, overrides)
    if seq_len < 0 or batch_size < 0:
        raise LmlabError("--seq-len and --batch-size must be positive")
    if not 0 < mfu <= 1:
        raise LmlabError(f"--mfu must be in (0, 1], got {mfu}")
    res = account(
        cfg,
        seq_len=seq_len,
        batch_size=batch_size,
        memory_gb=memory_gb,
        tokens=tokens,
        mfu_fraction=mfu,
        peak_tflops=peak_tflops,
    )
    if as_json:
        print(json.dumps(res, indent=2))
    else:
        print(format_report(res), end="")
