"""The TransformerLens config of the native model with a ModelConfig's architecture.

Its own module (no model import) so that MarkovTransformer's weight processing and the
export (training.interop) share it without an import cycle.
"""

from __future__ import annotations

import torch
from transformer_lens.config import TransformerBridgeConfig

from training.config import ModelConfig

NATIVE_ACT_FN = {"gelu": "gelu", "relu": "relu"}


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
