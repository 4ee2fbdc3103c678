"""Export to and import from other formats.

- :mod:`lmlab.export.hf`: a run as a Hugging Face transformers folder (``lmlab export --format hf``);
- :mod:`lmlab.export.hf_import`: a transformers GPT-2 / Llama folder as an lmlab model
  (``train.init_from = "hf:PATH"``);
- :mod:`lmlab.export.gguf`: a run as one GGUF file for llama.cpp (``lmlab export --format gguf``);
- :mod:`lmlab.export.names`: the tensor-name table all three share.
"""

from lmlab.export.hf import (
    export_hf,
    export_model,
    hf_config,
    hf_family,
    hf_state_dict,
    write_tokenizer_files,
)
from lmlab.export.names import GPT2_ACT

__all__ = [
    "GPT2_ACT",
    "export_hf",
    "export_model",
    "hf_config",
    "hf_family",
    "hf_state_dict",
    "write_tokenizer_files",
]
