"""Export a run to one GGUF file that llama.cpp (and Ollama, LM Studio, ...) runs.

Written with the ``gguf`` package that llama.cpp publishes, following its
``convert_hf_to_gguf.py``:

- architecture ``llama`` for the rmsnorm + RoPE + SwiGLU family (GQA through
  ``head_count_kv``, optional biases), ``gpt2`` for the layernorm + learned positions + GELU
  family (a NoPE run gets an all-zero position table, a bias-free one zero biases: the same
  function), ``qwen3`` for the llama family with ``model.qk_norm`` (``attn_q_norm`` and
  ``attn_k_norm`` per block); tensor names from :mod:`lmlab.export.names`, q/k rows of the
  ``llama`` family reordered for llama.cpp's adjacent-pair RoPE (``qwen3``'s rotates halves,
  as lmlab does);
- metadata: context length, embedding and feed-forward widths, block and head counts, RoPE
  theta and dimension, norm epsilon, vocabulary size, file type;
- the tokenizer embedded as ``tokenizer.ggml.model = "gpt2"`` (byte-level BPE): every token in
  GPT-2's printable byte form, the merges, special tokens as CONTROL, unused ids up to the
  model's vocabulary size as ``[PADn]`` UNUSED, ``tokenizer.ggml.pre = "gpt-2"`` (lmlab's
  split pattern), end-of-text as BOS and EOS (never added automatically);
- ``--dtype`` f32 (exact), f16 or q8_0 for matrices; 1-D tensors, norms, biases and the
  position table stay f32, and a matrix whose rows are not a multiple of 32 falls back from
  q8_0 to f16, as in the converter.

A run that GGUF cannot express raises LmlabError naming the setting (see
:func:`lmlab.export.names.family` and :func:`check_tokenizer`). The file is written to a
temporary name and renamed, so ``--out`` is either the complete export or untouched; an
existing file there is replaced only when it is an lmlab GGUF export.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmlab.errors import LmlabError
from lmlab.export.names import family, to_format
from lmlab.model.transformer import resolve_d_ff
from lmlab.runs import load_model_for_inference
from lmlab.tokenizer.bytelevel import GPT2_PATTERN, bytes_to_token_str

DTYPES = ("f32", "f16", "q8_0")
SOURCE_KEY = "lmlab.source"
_F16_MAX = 65504.0


def _gguf() -> Any:
    try:
        import gguf  # noqa: PLC0415 (optional extra: lmlab[gguf])
    except ImportError:
        raise LmlabError(
            "--format gguf needs the gguf package: pip install gguf (or lmlab[gguf])"
        ) from None
    return gguf


# --- what can be expressed -------------------------------------------------------------------


def pre_tokenizer_type(tokenizer: Any) -> str:
    """llama.cpp's ``tokenizer.ggml.pre`` for this tokenizer, or LmlabError saying why none fits."""
    kind = getattr(tokenizer, "kind", "?")
    if kind != "bpe":
        raise LmlabError(
            f"tokenizer kind {kind!r}: GGUF embeds a byte-level BPE tokenizer (llama.cpp's gpt2 model); "
            "train one with --kind bpe"
        )
    hf = tokenizer.hf_tokenizer
    if hf.normalizer is not None:
        raise LmlabError(
            "tokenizer: it has a normalizer, which llama.cpp's gpt2 tokenizer does not apply"
        )
    if tokenizer.pattern != GPT2_PATTERN:
        raise LmlabError(
            f"tokenizer: its split pattern {tokenizer.pattern!r} is not GPT-2's, the one llama.cpp's "
            "'gpt-2' pre-tokenizer implements"
        )
    return "gpt-2"


def check_exportable(mcfg: Any, tokenizer: Any) -> str:
    """The family (``gpt2``/``llama``/``qwen3``) of an exportable run; LmlabError naming the
    setting if not."""
    fam = family(mcfg, "gguf")
    pre_tokenizer_type(tokenizer)
    if tokenizer.vocab_size > mcfg.vocab_size:
        raise LmlabError(
            f"model.vocab_size={mcfg.vocab_size} is below the tokenizer's {tokenizer.vocab_size}"
        )
    return fam


# --- tensors ---------------------------------------------------------------------------------


def tensor_type(name: str, shape: tuple[int, ...], dtype: str) -> str:
    """``f32``, ``f16`` or ``q8_0``: what ``name`` is stored as under ``--dtype dtype``.

    As in ``convert_hf_to_gguf.py``: 1-D tensors, norm weights, biases and the position table
    stay f32; q8_0 needs rows that are a multiple of its 32-value blocks, else f16.
    """
    if (
        len(shape) <= 1
        or name.endswith("_norm.weight")
        or not name.endswith(".weight")
        or name == "position_embd.weight"
    ):
        return "f32"
    if dtype == "q8_0" and shape[-1] % 32:
        return "f16"
    return dtype


def _encode_tensor(gguf: Any, name: str, t: torch.Tensor, kind: str) -> tuple[np.ndarray, Any]:
    data = t.numpy().astype(np.float32, copy=False)
    Q = gguf.GGMLQuantizationType
    if kind == "f32":
        return data, Q.F32
    big = float(np.abs(data).max(initial=0.0))
    if big > _F16_MAX:  # f16, and q8_0's f16 block scales (max/127), would overflow
        raise LmlabError(
            f"--dtype {kind}: {name} holds {big:.4g}, past float16's range; export with --dtype f32"
        )
    if kind == "f16":
        return data.astype(np.float16), Q.F16
    return gguf.quants.quantize(data, Q.Q8_0), Q.Q8_0


# --- tokenizer -------------------------------------------------------------------------------


def tokenizer_tables(tokenizer: Any, vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    """(tokens, token types, merges) as llama.cpp's gpt2 tokenizer reads them."""
    NORMAL, CONTROL, UNUSED = 1, 3, 5
    vocab = tokenizer.vocab
    special_ids = {i: s for s, i in tokenizer.special_tokens.items()}
    tokens: list[str] = []
    types: list[int] = []
    for i in range(vocab_size):
        if i in special_ids:
            tokens.append(special_ids[i])
            types.append(CONTROL)
        elif i in vocab:
            tokens.append(bytes_to_token_str(vocab[i]))
            types.append(NORMAL)
        else:  # an id the tokenizer never emits (model.vocab_size rounded up, or a gap)
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
    merges = [f"{bytes_to_token_str(a)} {bytes_to_token_str(b)}" for a, b in tokenizer.merges]
    return tokens, types, merges


# --- the file --------------------------------------------------------------------------------


def _write_metadata(
    w: Any, gguf: Any, mcfg: Any, fam: str, dtype: str, name: str, source: str
) -> None:
    H = mcfg.n_head
    w.add_name(name)
    w.add_string(SOURCE_KEY, source or "lmlab")
    w.add_context_length(mcfg.context_length)
    w.add_embedding_length(mcfg.d_model)
    w.add_block_count(mcfg.n_layer)
    w.add_feed_forward_length(resolve_d_ff(mcfg))
    w.add_head_count(H)
    w.add_head_count_kv(mcfg.n_kv_head or H)
    w.add_vocab_size(mcfg.vocab_size)
    if fam in ("llama", "qwen3"):
        w.add_rope_freq_base(float(mcfg.rope_theta))
        w.add_rope_dimension_count(mcfg.d_model // H)
        w.add_layer_norm_rms_eps(float(mcfg.norm_eps))
    else:
        w.add_layer_norm_eps(float(mcfg.norm_eps))
    ftype = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }[dtype]
    w.add_file_type(int(ftype))
    if dtype == "q8_0":
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _write_tokenizer(w: Any, tokenizer: Any, vocab_size: int) -> None:
    tokens, types, merges = tokenizer_tables(tokenizer, vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre_tokenizer_type(tokenizer))
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    eot = tokenizer.eot_id
    if eot is not None:
        w.add_bos_token_id(int(eot))
        w.add_eos_token_id(int(eot))
        w.add_pad_token_id(int(eot))
    # lmlab never adds BOS/EOS around a prompt; neither must llama.cpp
    w.add_add_bos_token(False)
    w.add_add_eos_token(False)


def _check_out(out: Path) -> None:
    """Replace only a file lmlab wrote: an existing non-lmlab file or a folder is refused."""
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_file():
        raise LmlabError(f"--out {out}: exists and is not a file; GGUF export writes one file")
    gguf = _gguf()
    try:
        reader = gguf.GGUFReader(str(out))
        ours = SOURCE_KEY in reader.fields
    except Exception:  # not a GGUF at all (the reader raises assorted errors)
        ours = False
    if not ours:
        raise LmlabError(
            f"--out {out}: exists and is not an lmlab GGUF export; remove it or choose another path"
        )


def export_gguf_model(
    model: torch.nn.Module,
    tokenizer: Any,
    out: Path,
    dtype: str = "f32",
    source: str = "",
    name: str = "",
) -> Path:
    """Write ``model`` + ``tokenizer`` as the GGUF file ``out`` (atomically); return ``out``."""
    if dtype not in DTYPES:
        raise LmlabError(f"--dtype: one of {', '.join(DTYPES)}, got {dtype!r}")
    gguf = _gguf()
    mcfg = model.config
    fam = check_exportable(mcfg, tokenizer)
    out = Path(out)
    _check_out(out)
    tensors = to_format(dict(model.state_dict()), mcfg, fam, "gguf")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        w = gguf.GGUFWriter(str(tmp), arch=fam)
        _write_metadata(w, gguf, mcfg, fam, dtype, name or out.stem, source)
        _write_tokenizer(w, tokenizer, mcfg.vocab_size)
        for tname, t in tensors.items():
            data, qtype = _encode_tensor(gguf, tname, t, tensor_type(tname, tuple(t.shape), dtype))
            w.add_tensor(tname, data, raw_dtype=qtype)  # a q8_0 byte array: its shape is derived
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return out


def export_gguf(run: str | Path, out: Path, dtype: str = "f32") -> Path:
    """`lmlab export RUN --format gguf --out FILE.gguf [--dtype ...]`."""
    if dtype not in DTYPES:
        raise LmlabError(f"--dtype: one of {', '.join(DTYPES)}, got {dtype!r}")
    model, _cfg, tokenizer = load_model_for_inference(run, device="cpu")
    return export_gguf_model(
        model,
        tokenizer,
        Path(out),
        dtype,
        source=str(Path(run).resolve()),
        name=Path(run).resolve().name,
    )
