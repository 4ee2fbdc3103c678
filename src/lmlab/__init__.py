"""lmlab: train, study and ship small language models from raw text or Python code."""

__version__ = "0.1.0"
