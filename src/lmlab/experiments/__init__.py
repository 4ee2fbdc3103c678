"""lmlab.experiments"""
