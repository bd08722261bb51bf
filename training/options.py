"""Run options: the flat, CLI-shaped description of a run and its translation into configs.

A run is described by four sections whose keys mirror `markov-lens train`'s options (dashes
become underscores); sweep specs use the same keys with lists as grid axes:

    chain: p, q (binary P(1|0), P(0|1)), order (k > 1 with p, q: the paper's lag-k chain),
           states (S > 2 with p: stay 1-p, move p/(S-1)), in_context (a fresh kernel per
           sequence; with states, order, alpha, doubly_stochastic, group_size: sequences per
           kernel, an int or "batch" = one kernel per minibatch), chain_init
           ("stationary"/"uniform" law of the first tokens)
           -- or a full chain dict with "family" (as `chain.to_dict()` writes it)
    model: layers, heads, d_model, d_head, d_mlp, tie, mlp, ln, window, init, init_range,
           act_fn, positional -- or ModelConfig field names (n_layers, tie_embeddings, ...)
    train: TrainConfig fields (iters, batch, seq_len, lr, eval_every, ...)
    seed:  int

`build_run_config` turns that into a RunConfig (ModelConfig, chain, TrainConfig, seed); the
model's n_ctx defaults to train.seq_len. A run directory's config.json is also accepted.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from training.chains import (
    BinaryChain,
    InContextChain,
    KthOrderChain,
    MarkovChain,
    chain_from_dict,
)
from training.config import ModelConfig
from training.recipe import TrainConfig
from training.seeds import MAX_SEED, check_seed  # noqa: F401 (MAX_SEED: re-exported)

CHAIN_OPTIONS = (
    "p",
    "q",
    "order",
    "states",
    "in_context",
    "alpha",
    "doubly_stochastic",
    "group_size",
    "chain_init",
)
# option name -> ModelConfig field
MODEL_ALIASES = {
    "layers": "n_layers",
    "heads": "n_heads",
    "tie": "tie_embeddings",
    "mlp": "attn_only",
    "ln": "normalization_type",
    "window": "attn_window",
    "positional": "positional_embedding_type",
    "embedding": "token_embedding",
}
MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(ModelConfig) if f.name != "device")
MODEL_OPTIONS = tuple(MODEL_ALIASES) + MODEL_FIELDS
TRAIN_OPTIONS = tuple(f.name for f in dataclasses.fields(TrainConfig))
SECTIONS = ("chain", "model", "train", "seed")


@dataclass
class RunConfig:
    """Everything that defines a run: architecture, data source, recipe and seed."""

    model: ModelConfig
    chain: MarkovChain
    train: TrainConfig
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The config.json form of a run directory."""
        return {
            "model": self.model.to_dict(),
            "chain": self.chain.to_dict(),
            "train": self.train.to_dict(),
            "seed": self.seed,
        }


def _check_keys(section: str, d: Any, allowed: tuple[str, ...]) -> dict:
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise ValueError(f"'{section}' must be a mapping of options, got {type(d).__name__}")
    for key in d:
        if key not in allowed:
            raise ValueError(
                f"unknown {section} option {key!r}; allowed {section} options: "
                + ", ".join(allowed)
            )
    return dict(d)


def _opt_int(name: str, value: Any, minimum: int, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"chain option {name} must be an integer >= {minimum}, got {value!r}")
    return value


def _opt_bool(section: str, name: str, value: Any) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"{section} option {name} must be true or false, got {value!r}")
    return value


MAX_STATES_POWER = 1 << 16  # S^(k+1) kernel entries at most (a bigger kernel is a typo)


def build_chain(opts: dict[str, Any] | None) -> MarkovChain:
    """The chain the chain options name (or a chain dict with "family")."""
    if isinstance(opts, dict) and "family" in opts:
        if not isinstance(opts["family"], str):
            raise ValueError(f"chain family must be a string, got {opts['family']!r}")
        return chain_from_dict(opts)
    o = _check_keys("chain", opts, CHAIN_OPTIONS)
    init = o.pop("chain_init", None)
    if init is not None and not isinstance(init, str):
        raise ValueError(f"chain option chain_init must be a string, got {init!r}")
    kw = {"init": init} if init else {}
    in_context = _opt_bool("chain", "in_context", o.get("in_context"))
    doubly = _opt_bool("chain", "doubly_stochastic", o.get("doubly_stochastic"))
    states = _opt_int("states", o.get("states"), 2, 2)
    order = _opt_int("order", o.get("order"), 1, 1)
    if states ** (order + 1) > MAX_STATES_POWER:
        raise ValueError(
            f"states={states}, order={order} give a kernel of {states}^{order + 1} entries; "
            f"at most {MAX_STATES_POWER}"
        )
    if in_context:
        for bad in ("p", "q"):
            if o.get(bad) is not None:
                raise ValueError(f"chain option {bad!r} does not apply to an in-context chain")
        args = {"states": states, "order": order}
        if o.get("alpha") is not None:
            args["alpha"] = o["alpha"]
        if doubly is not None:
            args["doubly_stochastic"] = doubly
        group = o.get("group_size")
        if group is not None:
            if group != "batch" and (
                isinstance(group, bool) or not isinstance(group, int) or group < 1
            ):
                raise ValueError(
                    f"chain option group_size must be an integer >= 1 (sequences per kernel) "
                    f"or 'batch' (one kernel per minibatch), got {group!r}"
                )
            args["group_size"] = None if group == "batch" else group
        return InContextChain(**args, **kw)
    for bad in ("alpha", "doubly_stochastic", "group_size"):
        if o.get(bad) not in (None, False):
            raise ValueError(f"chain option {bad!r} needs in_context: true")
    p, q = o.get("p"), o.get("q")
    if states != 2:
        if p is None or q is not None:
            raise ValueError(
                f"a {states}-state chain takes p (move probability; stay 1-p) and no q"
            )
        return KthOrderChain.symmetric(states, p, order, **kw)
    if p is None or q is None:
        raise ValueError(
            "name a chain: p and q (binary), with order K for the lag-K chain; states S with p; "
            "or in_context"
        )
    if order == 1:
        return BinaryChain(p, q, **kw)
    return KthOrderChain.lag(order, p, q, **kw)


def _window(value: Any) -> Any:
    if isinstance(value, str) and value.lower() in ("none", "null", "causal", "-1"):
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value < 0:
        return None  # the paper's --memory M < 0: ordinary causal attention
    if isinstance(value, (list, tuple)):
        return [_window(v) for v in value]
    return value


def build_model_config(opts: dict[str, Any] | None, seq_len: int) -> ModelConfig:
    """ModelConfig.paper() with the model options applied; n_ctx defaults to seq_len."""
    o = _check_keys("model", opts, MODEL_OPTIONS)
    fields: dict[str, Any] = {}
    for key, value in o.items():
        target = MODEL_ALIASES.get(key, key)
        if target in fields:
            raise ValueError(f"model options give {target} twice (as {key!r} and its alias)")
        if key in ("tie", "mlp", "ln"):
            _opt_bool("model", key, value)
        if key == "mlp":
            value = not value
        elif key == "ln":
            value = "LN" if value else None
        elif target == "attn_window":
            value = _window(value)
        fields[target] = value
    fields.setdefault("n_ctx", seq_len)
    if not isinstance(fields["n_ctx"], int) or isinstance(fields["n_ctx"], bool):
        raise ValueError(f"model n_ctx must be an integer, got {fields['n_ctx']!r}")
    if fields["n_ctx"] < seq_len:
        raise ValueError(f"model n_ctx={fields['n_ctx']} is shorter than train seq_len={seq_len}")
    return ModelConfig.paper(**fields)


def build_run_config(doc: dict[str, Any]) -> RunConfig:
    """RunConfig from {"chain": ..., "model": ..., "train": ..., "seed": ...} (options or a
    run's config.json); missing sections take the paper's defaults (the chain is required)."""
    if not isinstance(doc, dict):
        raise ValueError(f"a run config must be a mapping, got {type(doc).__name__}")
    unknown = [k for k in doc if k not in SECTIONS]
    if unknown:
        raise ValueError(
            f"unknown config section {unknown[0]!r}; allowed sections: " + ", ".join(SECTIONS)
        )
    train = TrainConfig.from_dict(_check_keys("train", doc.get("train"), TRAIN_OPTIONS))
    model = build_model_config(doc.get("model"), train.seq_len)
    chain = build_chain(doc.get("chain"))
    if model.d_vocab != chain.n_states:
        if "d_vocab" in (doc.get("model") or {}):
            raise ValueError(
                f"model d_vocab={model.d_vocab} does not match the chain's {chain.n_states} states"
            )
        model = dataclasses.replace(model, d_vocab=chain.n_states)
    seed = check_seed(doc.get("seed", 0))
    return RunConfig(model=model, chain=chain, train=train, seed=seed)
