"""Instruction data for fine-tuning, one idea per module.

:mod:`.templates` renders prompts, :mod:`.records` reads instruction records (JSON/JSONL,
MBPP, the hub), :mod:`.examples` tokenizes them with the response-only loss mask, and
:mod:`.batches` pads them into length-bucketed batches (no packing) for the training loop.
"""

from lmlab.data.sft.batches import BUCKET_BATCHES, SftData, SftLoader, collate, val_batches
from lmlab.data.sft.examples import IGNORE, Example, fingerprint, hold_out, subset, tokenize_records
from lmlab.data.sft.records import (
    Record,
    SkipReport,
    mbpp_instruction,
    read_records,
    split_spec,
    to_record,
)
from lmlab.data.sft.templates import (
    DEFAULT_TEMPLATE,
    TEMPLATES,
    PromptTemplate,
    resolve_template,
    template_record,
)

__all__ = [
    "BUCKET_BATCHES",
    "DEFAULT_TEMPLATE",
    "IGNORE",
    "TEMPLATES",
    "Example",
    "PromptTemplate",
    "Record",
    "SftData",
    "SftLoader",
    "SkipReport",
    "collate",
    "fingerprint",
    "hold_out",
    "mbpp_instruction",
    "read_records",
    "resolve_template",
    "split_spec",
    "subset",
    "template_record",
    "to_record",
    "tokenize_records",
    "val_batches",
]
