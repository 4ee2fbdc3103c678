"""lmlab.tokenizer: byte-level BPE (HF ``tokenizers`` + tiktoken fast path) and char-level.

tok = train_tokenizer(["data/"], vocab_size=8192, out=Path("tok"), special_tokens=["<|endoftext|>"])
tok = load_tokenizer("tok")        # or a tokenizer.json, or a folder with GPT-2's files
ids = tok.encode("hello<|endoftext|>")
text = tok.decode(ids)
"""

from lmlab.tokenizer.base import EOT_TOKEN, Tokenizer
from lmlab.tokenizer.bpe import BPETokenizer
from lmlab.tokenizer.bytelevel import GPT2_PATTERN
from lmlab.tokenizer.char import CharTokenizer
from lmlab.tokenizer.hf import HFTokenizer
from lmlab.tokenizer.load import load_tokenizer
from lmlab.tokenizer.train import train_tokenizer

__all__ = [
    "EOT_TOKEN",
    "GPT2_PATTERN",
    "BPETokenizer",
    "CharTokenizer",
    "HFTokenizer",
    "Tokenizer",
    "load_tokenizer",
    "train_tokenizer",
]
