"""GPT-2's byte <-> printable-unicode map, used by byte-level BPE files (tokenizer.json, vocab.bpe).

Byte-level BPE files store each token as a string in which every byte is one printable
character (space becomes "Ġ", newline "Ċ", ...). These helpers turn such strings back into the
raw bytes lmlab exposes, and raw bytes into the stored form.
"""

from __future__ import annotations

import functools

# GPT-2's split pattern (the ByteLevel pre-tokenizer's regex in HF tokenizers; tiktoken's "gpt2").
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


@functools.cache
def byte_to_unicode() -> dict[int, str]:
    """The map of openai/gpt-2 encoder.py: printable bytes map to themselves, the rest to 256+n."""
    keep = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = list(keep)
    n = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(keep, chars)}


@functools.cache
def unicode_to_byte() -> dict[str, int]:
    return {c: b for b, c in byte_to_unicode().items()}


def token_str_to_bytes(token: str) -> bytes:
    """A byte-level token string (e.g. "Ġthe") to its bytes (b" the"); KeyError if not byte-level."""
    table = unicode_to_byte()
    return bytes(table[c] for c in token)


def bytes_to_token_str(data: bytes) -> str:
    table = byte_to_unicode()
    return "".join(table[b] for b in data)
