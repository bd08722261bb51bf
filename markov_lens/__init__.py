"""markov-lens: train transformers on Markov chains and see what they learnt.

The front door for notebooks: ``import markov_lens as ml`` gives the names below, each
imported from its home package on first use (``import markov_lens`` itself imports nothing
heavy). The packages behind it: ``training`` (chains, exact references, the model, the
trainer, runs, sweeps, the paper's experiments), ``probes`` (linear probes with controls)
and ``interp`` (attention, heads, attribution, patching, the loss landscape, comparisons,
reports, the atlas). The ``markov-lens`` command line lives in ``markov_lens.cli`` and the
shipped runs in ``markov_lens.zoo``; ``import markov_lens`` imports neither (``load_run``
and ``zoo_path`` load the zoo on first use).

    import markov_lens as ml
    chain = ml.BinaryChain(0.5, 0.8)
    summary = ml.train(ml.ModelConfig.paper(n_ctx=256), chain,
                       ml.TrainConfig.paper(seq_len=256), seed=0, out_dir="runs/untied")
    run = ml.load_run("runs/untied")
    ml.explain_run("runs/untied")
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> the module it lives in ("module:attribute" where the name differs there)
EXPORTS: dict[str, str] = {
    # sources and exact references (docs/theory.md section 2)
    "BinaryChain": "training.chains",
    "KthOrderChain": "training.chains",
    "InContextChain": "training.chains",
    "chain_from_dict": "training.chains",
    "reference_losses": "training.references",
    "entropy_rate": "training.references",
    "unigram_loss": "training.references",
    "order_j_loss": "training.references",
    "stationary_marginal": "training.references",
    "in_context_losses": "training.references",
    # model, recipe, training, runs
    "ModelConfig": "training.config",
    "MarkovTransformer": "training.model",
    "TrainConfig": "training.recipe",
    "build_run_config": "training.options",
    "train": "training.trainer",
    "train_ensemble": "training.trainer",
    "load_run": "markov_lens.zoo",  # training.runs.load_run, and zoo/NAME for shipped runs
    "zoo_path": "markov_lens.zoo",
    "zoo": "markov_lens.zoo",  # zoo(): the shipped runs, one line each
    "to_transformerlens": "markov_lens.zoo",  # training.interop's, also for zoo/NAME paths
    "run_sweep": "training.sweeps",
    "reproduce": "training.experiments",
    # probes
    "ProbeConfig": "probes.sweeps",
    "probe_model": "probes.sweeps",
    "probe_run": "probes.sweeps",
    # interpretability
    "attention_patterns": "interp.attention",
    "head_scores": "interp.heads",
    "logit_attribution": "interp.attribution",
    "make_patching_data": "interp.corruptions",
    "patch_sweep": "interp.patching",
    "run_patching": "interp.patching",
    "direct_path_effects": "interp.patching",
    "explain_model": "interp.explain",
    "explain_run": "interp.explain",
    "LandscapeConfig": "interp.landscape",
    "hessian_report": "interp.landscape",
    "theta_pi_model": "interp.landscape",
    "compare": "interp.compare",
    "timeline": "interp.timeline",
    "html_report": "interp.report:write_report",  # the one-page HTML report of a run
    # the atlas
    "AtlasConfig": "interp.atlas",
    "run_atlas": "interp.atlas",
    "load_atlas": "interp.atlas",
    "measure_run": "interp.atlas",
    "preset_spec": "interp.atlas",
}
__all__ = sorted(EXPORTS)


def __getattr__(name: str) -> Any:
    module = EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'markov_lens' has no attribute {name!r}")
    module, _, attribute = module.partition(":")
    value = getattr(importlib.import_module(module), attribute or name)
    globals()[name] = value  # the next access skips this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(EXPORTS))
