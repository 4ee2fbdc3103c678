"""lmlab.model"""
