"""Probes fitted on cached activations, with control tasks and baselines."""
