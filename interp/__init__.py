"""Interpretability: attention, head scores, attribution, patching, landscape, reports."""
