"""Symbolic code tokenizer: Python code as structure, names and literals abstracted away.

One idea per module: :mod:`.abstract` turns code into symbolic tokens and back (the scheme
is described there), :mod:`.tokenizer` maps those tokens to ids, :mod:`.train` fits the
fallback BPE. The parse rate of samples lives with the other code checks in
:mod:`lmlab.eval.code`.
"""

from lmlab.tokenizer.symbolic.abstract import SymbolTable, abstract, restore, same_ast
from lmlab.tokenizer.symbolic.tokenizer import SYMBOLIC_FILE, SymbolicTokenizer
from lmlab.tokenizer.symbolic.train import check_symbolic_vocab_size, train_symbolic

__all__ = [
    "SYMBOLIC_FILE",
    "SymbolTable",
    "SymbolicTokenizer",
    "abstract",
    "check_symbolic_vocab_size",
    "restore",
    "same_ast",
    "train_symbolic",
]
