"""Export a MarkovTransformer to TransformerLens's own model: a TransformerBridge around the
TL-native transformer (`TransformerBridge.boot_native`), loaded with
`transformer_lens.utilities.tl_checkpoint_conversion.convert_tl_checkpoint` applied to
`model.hooked_state_dict()`. `to_transformerlens` is the front door (``ml.to_transformerlens``);
`to_transformer_bridge` the raw, unprocessed export.

What the native model (transformer_lens 4.x, model_bridge/sources/native) can express, and how
each of our options maps onto it:

- pre-LN blocks, nn.LayerNorm (always with a bias): ln_bias=False exports zero biases;
  normalization_type=None maps to no norm. Same eps.
- nn.Linear Q/K/V/O and MLP, always biased: linear_bias=False exports zero biases.
- act_fn "gelu" is the exact (erf) GELU on both sides, "relu" is ReLU.
- learned positions ("standard"); a model without positional embedding exports W_pos = 0.
- unembedding: a weight plus a bias (a frozen buffer in the bridge), so b_U is carried over.
- attention windows (attn_window): each native attention layer masks with its own boolean
  buffer ``causal_mask`` [n_ctx, n_ctx]; the export writes the band (query n sees n-M..n) there.
- separate embedding and unembedding matrices: a tied model is exported with W_U = W_E^T as a
  separate copy (same function; the bridge does not keep the two equal if it is trained).

What TransformerLens 4.3 gets wrong, and what the export does about it:

- ``hook_attn_scores``: the generic AttentionBridge fires it on the post-softmax pattern the
  native attention returns. The export recomputes the masked pre-softmax scores
  q k^T / sqrt(d_head) (-inf outside the mask) from the layer's own q and k and fires the hook
  on those, as HookedTransformer did. Editing them in a hook changes nothing downstream (TL
  warns): patch hook_pattern instead.
- ``cache.logit_attrs`` / ``decompose_resid`` / ``tokens_to_residual_directions`` assume the
  final LayerNorm is folded into W_U; unprocessed, attributions miss the logit difference.
  `to_transformerlens` therefore calls ``enable_compatibility_mode()`` (TL's
  HookedTransformer-style processing: fold every LayerNorm, centre the weights writing to the
  residual stream, centre W_U and b_U, fold b_V into b_O). Its logits then differ from the
  model's by one constant per position (log-probabilities equal within float error) and
  logit attributions sum to the logit difference minus b_U's difference.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch
from transformer_lens.model_bridge import TransformerBridge
from transformer_lens.model_bridge.sources.native import boot as boot_native
from transformer_lens.utilities.tl_checkpoint_conversion import convert_tl_checkpoint

from training.bridge_config import NATIVE_ACT_FN, bridge_config  # noqa: F401 (re-exported)
from training.config import ModelConfig
from training.fused_attention import band_mask
from training.model import MarkovTransformer

if TYPE_CHECKING:
    from training.runs import Run

# Our act_fn name -> the native model's name for the same function.


def unsupported_features(cfg: ModelConfig, untie: bool = False) -> list[str]:
    """Reasons the TL-native model cannot compute exactly what `cfg` computes (empty: it can)."""
    reasons = []
    if cfg.tie_embeddings and not untie:
        reasons.append(
            "tie_embeddings=True: the native model has separate embedding and unembedding "
            "matrices (pass untie=True to export an untied copy with W_U = W_E^T)"
        )
    if cfg.act_fn not in NATIVE_ACT_FN:
        reasons.append(f"act_fn={cfg.act_fn!r} has no native counterpart")
    return reasons


def to_transformer_bridge(model: MarkovTransformer, untie: bool = False) -> TransformerBridge:
    """A TransformerBridge (TL-native model, eval mode, same device and dtype, the model's
    tokenizer attached) computing the same logits as `model`, weights unprocessed. Raises
    ValueError, naming the option, for a config the native model cannot express (tied
    embeddings unless untie=True)."""
    cfg = model.cfg
    reasons = unsupported_features(cfg, untie=untie)
    if reasons:
        raise ValueError(
            "cannot export this model to a TransformerLens native bridge: " + "; ".join(reasons)
        )
    weight = model.embed.W_E
    bcfg = bridge_config(cfg, dtype=weight.dtype)
    bridge = boot_native(bcfg, device=weight.device, dtype=weight.dtype)
    # Assigned after boot: boot's tokenizer probe encodes "a", which is no token here.
    bridge.tokenizer = model.tokenizer
    state = model.hooked_state_dict()
    if cfg.positional_embedding_type == "none":
        state["pos_embed.W_pos"] = torch.zeros(
            cfg.n_ctx, cfg.d_model, dtype=weight.dtype, device=weight.device
        )
    converted = convert_tl_checkpoint(state, bcfg)
    bridge.load_state_dict(converted, strict=True)  # raises on any missing/unexpected key
    for block, window in zip(bridge.blocks, cfg.windows(), strict=True):
        native = block.attn.original_component
        with torch.no_grad():  # True = masked: outside the band n-window..n
            native.causal_mask.copy_(~band_mask(cfg.n_ctx, window, native.causal_mask.device))
        fire_true_attn_scores(block.attn)
    return bridge.eval()


def fire_true_attn_scores(attn) -> None:
    """Make an AttentionBridge around a NativeAttention fire ``hook_attn_scores`` on the masked
    pre-softmax scores [batch, head, query_pos, key_pos] (module doc) instead of the pattern:
    its q and k projections' outputs are kept for the one forward, and the scores rebuilt from
    them with the layer's own scale and mask."""
    native = attn.original_component
    seen: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(module, inputs, output) -> None:
            seen[name] = output

        return hook

    native.q.register_forward_hook(keep("q"))
    native.k.register_forward_hook(keep("k"))
    fire = attn._fire_post_hoc_hook

    def fire_post_hoc(hook, tensor: torch.Tensor, label: str) -> torch.Tensor:
        if label == "hook_attn_scores" and "q" in seen and "k" in seen:
            q, k = seen.pop("q"), seen.pop("k")
            batch, seq = q.shape[:2]
            q = q.view(batch, seq, native.n_heads, native.d_head).transpose(1, 2)
            k = k.view(batch, seq, native.n_kv_heads, native.d_head).transpose(1, 2)
            scores = q @ k.transpose(-2, -1) / native.scale
            tensor = scores.masked_fill(native.causal_mask[:seq, :seq], float("-inf"))
        return fire(hook, tensor, label)

    attn._fire_post_hoc_hook = fire_post_hoc


def to_transformerlens(
    source: MarkovTransformer | Run | str | os.PathLike,
    *,
    process_weights: bool = True,
    step: int | None = None,
) -> TransformerBridge:
    """The model (or a run's model at `step`, default its last checkpoint) as TransformerLens's
    own TransformerBridge, tokenizer attached. Tied models are exported as an untied copy,
    windowed ones with their band mask. With `process_weights` (default) the bridge is in
    ``enable_compatibility_mode()``: LayerNorms folded, writing weights and W_U centred, so that
    TransformerLens's logit attributions are right; its logits then differ from ours by one
    constant per position (module doc). process_weights=False: the raw export, same logits."""
    if isinstance(source, MarkovTransformer):
        if step is not None:
            raise ValueError("step applies to runs only, not to a model")
        model = source
    else:
        from training.runs import Run, load_run

        run = source if isinstance(source, Run) else load_run(source)
        model = run.model(step)
    bridge = to_transformer_bridge(model, untie=True)
    if process_weights:
        bridge.enable_compatibility_mode(disable_warnings=True)
    return bridge
