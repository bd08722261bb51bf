"""Export a MarkovTransformer to TransformerLens's own model: a TransformerBridge around the
TL-native transformer (`TransformerBridge.boot_native`), loaded with
`transformer_lens.utilities.tl_checkpoint_conversion.convert_tl_checkpoint` applied to
`model.hooked_state_dict()`.

What the native model (transformer_lens 4.x, model_bridge/sources/native) can express, and how
each of our options maps onto it:

- pre-LN blocks, nn.LayerNorm (always with a bias): ln_bias=False exports zero biases;
  normalization_type=None maps to no norm. Same eps.
- nn.Linear Q/K/V/O and MLP, always biased: linear_bias=False exports zero biases.
- act_fn "gelu" is the exact (erf) GELU on both sides, "relu" is ReLU.
- learned positions ("standard"); a model without positional embedding exports W_pos = 0.
- unembedding: a weight plus a bias (a frozen buffer in the bridge), so b_U is carried over.
- plain causal attention only: attention windows (attn_window) are refused.
- separate embedding and unembedding matrices: a tied model is refused unless untie=True,
  which exports W_U = W_E^T as a separate copy (same function; the bridge will not keep the
  two equal if it is trained).
"""

from __future__ import annotations

import torch
from transformer_lens.config import TransformerBridgeConfig
from transformer_lens.model_bridge import TransformerBridge
from transformer_lens.model_bridge.sources.native import boot as boot_native
from transformer_lens.utilities.tl_checkpoint_conversion import convert_tl_checkpoint

from training.config import ModelConfig
from training.model import MarkovTransformer

# Our act_fn name -> the native model's name for the same function.
NATIVE_ACT_FN = {"gelu": "gelu", "relu": "relu"}


def unsupported_features(cfg: ModelConfig, untie: bool = False) -> list[str]:
    """Reasons the TL-native model cannot compute exactly what `cfg` computes (empty: it can)."""
    reasons = []
    windows = cfg.windows()
    if any(w is not None for w in windows):
        reasons.append(
            f"attn_window={cfg.attn_window!r}: the native model has plain causal attention only"
        )
    if cfg.tie_embeddings and not untie:
        reasons.append(
            "tie_embeddings=True: the native model has separate embedding and unembedding "
            "matrices (pass untie=True to export an untied copy with W_U = W_E^T)"
        )
    if cfg.act_fn not in NATIVE_ACT_FN:
        reasons.append(f"act_fn={cfg.act_fn!r} has no native counterpart")
    return reasons


def bridge_config(cfg: ModelConfig, dtype: torch.dtype = torch.float32) -> TransformerBridgeConfig:
    """The TransformerBridgeConfig of the native model with the architecture of `cfg`."""
    return TransformerBridgeConfig(
        architecture="TransformerLensNative",
        model_name="markov-lens",
        d_model=cfg.d_model,
        d_head=cfg.d_head,
        n_layers=cfg.n_layers,
        n_ctx=cfg.n_ctx,
        n_heads=cfg.n_heads,
        d_vocab=cfg.d_vocab,
        d_mlp=cfg.d_mlp,
        act_fn=NATIVE_ACT_FN.get(cfg.act_fn, cfg.act_fn),
        eps=cfg.ln_eps,
        normalization_type=cfg.normalization_type,
        positional_embedding_type="standard",
        attn_only=cfg.attn_only,
        attention_dir="causal",
        default_prepend_bos=False,
        tokenizer_prepends_bos=False,
        dtype=dtype,
        seed=0,  # boot_native forks the RNG when seeded: the caller's RNG is left alone
    )


def to_transformer_bridge(model: MarkovTransformer, untie: bool = False) -> TransformerBridge:
    """A TransformerBridge (TL-native model, eval mode, same device and dtype) computing the
    same logits as `model`. Raises ValueError, naming the option, for a config the native model
    cannot express (attention windows; tied embeddings unless untie=True)."""
    cfg = model.cfg
    reasons = unsupported_features(cfg, untie=untie)
    if reasons:
        raise ValueError(
            "cannot export this model to a TransformerLens native bridge: " + "; ".join(reasons)
        )
    weight = model.embed.W_E
    bcfg = bridge_config(cfg, dtype=weight.dtype)
    bridge = boot_native(bcfg, device=weight.device, dtype=weight.dtype)
    state = model.hooked_state_dict()
    if cfg.positional_embedding_type == "none":
        state["pos_embed.W_pos"] = torch.zeros(
            cfg.n_ctx, cfg.d_model, dtype=weight.dtype, device=weight.device
        )
    converted = convert_tl_checkpoint(state, bcfg)
    bridge.load_state_dict(converted, strict=True)  # raises on any missing/unexpected key
    return bridge.eval()
