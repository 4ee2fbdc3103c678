"""lmlab.tokenizer"""
