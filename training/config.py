"""ModelConfig: every architectural knob of the Markov transformer, as one JSON-able dataclass.

Field names follow TransformerLens's HookedTransformerConfig where one exists (n_layers,
d_model, d_head, d_mlp, d_vocab, n_ctx, act_fn, normalization_type, attn_only,
positional_embedding_type, use_attn_result ...), so that `ActivationCache`, `get_act_name`
and `transformer_lens.patching` read `model.cfg` unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from training import limits
from training.jsonconfig import JsonConfig

ACT_FNS = ("gelu", "relu")
NORMALIZATIONS = ("LN", None)
POSITIONAL = ("standard", "none")
TOKEN_EMBEDDINGS = ("table", "linear")
INITS = ("paper", "theta_pi", "good")
MAX_WINDOW = 2**62  # attention masks compute i - window in int64
BOOL_FIELDS = (
    "attn_only",
    "ln_bias",
    "tie_embeddings",
    "unembed_bias",
    "linear_bias",
    "use_attn_result",
)


def _check_positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass
class ModelConfig(JsonConfig):
    """Architecture of a decoder-only transformer on a small vocabulary.

    attn_window: None is ordinary causal attention; an int M lets position n see positions
    n-M..n (itself and the M previous ones: the paper's --memory M); a list gives one value
    (int or None) per layer.
    normalization_type: "LN" (pre-LayerNorm ln1, ln2, ln_final) or None; ln_bias adds the
    LayerNorm bias (the paper has none).
    linear_bias: biases on Q, K, V, O and the MLP (the paper has none); unembed_bias is the
    unembedding bias b_U (the paper has one).
    token_embedding: "table" (a learned vector per token) or "linear" (binary vocabularies:
    token x maps to x * e, so token 0 is the zero vector: the Local-to-Global paper's
    simplified model, with normalization_type=None; embed.W_E's row 0 is held at 0).
    init: "paper" N(0, init_range) with residual output projections N(0, init_range/sqrt(2L));
    other named initialisations are applied by the model itself (MarkovTransformer(cfg, seed,
    pi=...), training.inits).
    """

    config_name = "model config"
    runtime_fields = ("device",)  # the runtime field below: not serialised

    d_vocab: int = 2
    n_ctx: int = 1024
    n_layers: int = 1
    n_heads: int = 1
    d_model: int = 8
    d_head: int | None = None
    d_mlp: int | None = None
    attn_only: bool = False
    act_fn: str = "gelu"
    normalization_type: str | None = "LN"
    ln_bias: bool = False
    ln_eps: float = 1e-5
    positional_embedding_type: str = "standard"
    token_embedding: str = "table"
    tie_embeddings: bool = True
    unembed_bias: bool = True
    linear_bias: bool = False
    attn_window: int | list[int | None] | None = None
    init: str = "paper"
    init_range: float = 0.02
    use_attn_result: bool = False
    # Runtime only (not serialised): where the weights live. Kept in sync by the model.
    device: str = field(default="cpu", compare=False, repr=False)

    def __post_init__(self) -> None:
        # Check the sizes d_head and d_mlp are derived from before deriving them.
        for name in ("n_heads", "d_model"):
            _check_positive_int(name, getattr(self, name))
        if self.d_head is None:
            if self.d_model % self.n_heads != 0:
                raise ValueError(
                    f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; "
                    "set d_head explicitly"
                )
            self.d_head = self.d_model // self.n_heads
        if self.d_mlp is None:
            self.d_mlp = 4 * self.d_model
        if isinstance(self.attn_window, tuple):
            self.attn_window = list(self.attn_window)
        self.validate()

    def validate(self) -> None:
        positive = {
            "d_vocab": self.d_vocab,
            "n_ctx": self.n_ctx,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "d_model": self.d_model,
            "d_head": self.d_head,
            "d_mlp": self.d_mlp,
        }
        for name, value in positive.items():
            _check_positive_int(name, value)
        if self.d_vocab < 2:
            raise ValueError(f"d_vocab must be at least 2, got {self.d_vocab}")
        for name, cap in (
            ("d_vocab", limits.MAX_VOCAB),
            ("n_ctx", limits.MAX_N_CTX),
            ("n_layers", limits.MAX_LAYERS),
            ("n_heads", limits.MAX_HEADS),
            ("d_model", limits.MAX_D_MODEL),
            ("d_head", limits.MAX_D_HEAD),
            ("d_mlp", limits.MAX_D_MLP),
        ):
            limits.check_cap(name, getattr(self, name), cap)
        n_params = limits.parameter_count(self)
        if n_params > limits.MAX_PARAMETERS:
            raise limits.TooLarge(
                f"n_layers={self.n_layers}, d_model={self.d_model}, n_heads={self.n_heads}, "
                f"d_head={self.d_head}, d_mlp={self.d_mlp} give {n_params:,} parameters; "
                f"at most {limits.MAX_PARAMETERS:,}"
            )
        if self.act_fn not in ACT_FNS:
            raise ValueError(f"act_fn must be one of {ACT_FNS}, got {self.act_fn!r}")
        if self.normalization_type not in NORMALIZATIONS:
            raise ValueError(
                f"normalization_type must be one of {NORMALIZATIONS}, got {self.normalization_type!r}"
            )
        if self.token_embedding not in TOKEN_EMBEDDINGS:
            raise ValueError(
                f"token_embedding must be one of {TOKEN_EMBEDDINGS}, got {self.token_embedding!r}"
            )
        if self.token_embedding == "linear" and self.d_vocab != 2:
            raise ValueError(
                f"token_embedding 'linear' (x * e) needs a binary vocabulary, got d_vocab="
                f"{self.d_vocab}"
            )
        if self.positional_embedding_type not in POSITIONAL:
            raise ValueError(
                f"positional_embedding_type must be one of {POSITIONAL}, "
                f"got {self.positional_embedding_type!r}"
            )
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        for name in ("init_range", "ln_eps"):
            value = getattr(self, name)
            try:
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
                ok = ok and math.isfinite(float(value)) and value > 0
            except OverflowError:  # an int beyond float range
                ok = False
            if not ok:
                raise ValueError(f"{name} must be > 0 and finite, got {value!r}")
            setattr(self, name, float(value))  # torch cannot add an int beyond int64
        for name in BOOL_FIELDS:
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        windows = self.windows()
        if len(windows) != self.n_layers:
            raise ValueError(
                f"attn_window lists {len(windows)} values but n_layers={self.n_layers}; "
                "give one int/None, or one per layer"
            )
        for w in windows:
            if w is not None and (
                not isinstance(w, int) or isinstance(w, bool) or not 0 <= w <= MAX_WINDOW
            ):
                raise ValueError(
                    f"attn_window values must be None (causal) or an int in 0..2^62, got {w!r}"
                )

    def windows(self) -> list[int | None]:
        """Attention window per layer (None = full causal)."""
        if isinstance(self.attn_window, list):
            return list(self.attn_window)
        return [self.attn_window] * self.n_layers

    # --- attributes TransformerLens reads from model.cfg --------------------------------
    @property
    def n_key_value_heads(self) -> None:
        return None

    @property
    def use_split_qkv_input(self) -> bool:
        return False

    @property
    def use_attn_in(self) -> bool:
        return False

    @property
    def use_hook_mlp_in(self) -> bool:
        return False

    @property
    def default_prepend_bos(self) -> bool:
        return False

    @property
    def final_rms(self) -> bool:
        return False

    # --- serialisation: to_dict, to_json, from_dict (training.jsonconfig) ---------------
    @classmethod
    def paper(cls, **overrides: Any) -> ModelConfig:
        """The architecture of the paper's code (docs/theory.md section 3): d_model 8, 1 layer,
        1 head, pre-LN without bias, no linear bias but the unembedding's, GELU MLP 4d wide,
        learned positions, tied embeddings, N(0, 0.02) init with scaled residual projections."""
        base = dict(
            d_vocab=2,
            n_ctx=1024,
            n_layers=1,
            n_heads=1,
            d_model=8,
            attn_only=False,
            act_fn="gelu",
            normalization_type="LN",
            ln_bias=False,
            positional_embedding_type="standard",
            tie_embeddings=True,
            unembed_bias=True,
            linear_bias=False,
            attn_window=None,
            init="paper",
            init_range=0.02,
        )
        base.update(overrides)
        return cls(**base)
