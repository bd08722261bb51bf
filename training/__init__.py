"""Markov sources with exact references, the transformer, and its training."""
