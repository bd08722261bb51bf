"""The Markov transformer: a nanoGPT-style decoder in TransformerLens HookedTransformer conventions.

Parameters carry HookedTransformer names and shapes (embed.W_E, pos_embed.W_pos,
blocks.{l}.attn.W_Q [n_heads, d_model, d_head], W_O [n_heads, d_head, d_model],
blocks.{l}.mlp.W_in [d_model, d_mlp], unembed.W_U [d_model, d_vocab], unembed.b_U ...) and
every interesting activation passes through a HookPoint with the HookedTransformer name
(hook_embed, blocks.{l}.hook_resid_pre, blocks.{l}.attn.hook_pattern, ...). It is built on
`transformer_lens.HookedRootModule`, so `run_with_hooks`, `run_with_cache` (returning an
`ActivationCache`) and `transformer_lens.patching` work on it unchanged.

With `tie_embeddings`, unembed.W_U is embed.W_E transposed: one Parameter, one state-dict
entry (docs/theory.md section 3: wte.weight = lm_head.weight).

This is the only implementation of the architecture. Attention and LayerNorm each have two
branches of one computation, chosen by whether a hook watches their internals: explicit
(scores, pattern, scale materialised for analysis) or fused (training.fused_attention's
compiled kernel or SDPA, which computes only the band n-window..n; torch's layer_norm).
Stacks of K members run this same module under torch.func.vmap (training.stacked).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator
from typing import Literal

import einops
import torch
import torch.nn as nn
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor
from transformer_lens import ActivationCache, FactoredMatrix, HookedRootModule
from transformer_lens.hook_points import HookPoint

from training.config import ModelConfig
from training.fused_attention import band_mask, fused_attention, under_grad_transform, uses_fused
from training.inits import apply_init

ATTENTION_BACKENDS = ("auto", "kernel", "torch", "explicit")


def watched(*hooks: HookPoint) -> bool:
    """Does anything watch one of these hook points? Any hook mechanism counts: TransformerLens
    hooks, torch forward, forward-pre and backward hooks on the HookPoint module, torch's global
    module hooks, and a forward replaced on the instance (nnsight wraps every module's forward
    this way). Only when nothing watches may a layer skip materialising them (fused branch)."""
    if any(_global_module_hooks()):
        return True
    return any(
        h.fwd_hooks
        or h.bwd_hooks
        or h._forward_hooks
        or h._forward_pre_hooks
        or h._backward_hooks
        or h._backward_pre_hooks
        or "forward" in h.__dict__
        for h in hooks
    )


def _global_module_hooks() -> tuple[dict, ...]:
    """torch's hooks registered for every module (torch.nn.modules.module.register_module_*)."""
    names = (
        "_global_forward_hooks",
        "_global_forward_pre_hooks",
        "_global_backward_hooks",
        "_global_backward_pre_hooks",
    )
    return tuple(getattr(torch.nn.modules.module, name, {}) for name in names)


class Embed(nn.Module):
    """Token embedding: a table W_E [d_vocab, d_model], or (cfg.token_embedding "linear",
    binary) the map x -> x * e with e = W_E[1], row 0 held at zero."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.W_E = nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_model))
        self.linear = cfg.token_embedding == "linear"
        if self.linear:
            self.register_buffer("rows", torch.tensor([[0.0], [1.0]]), persistent=False)

    def table(self) -> Float[Tensor, "d_vocab d_model"]:
        """The embedding of each token (for "linear": [0, e])."""
        return self.W_E * self.rows if self.linear else self.W_E

    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
        return self.table()[tokens]


class PosEmbed(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.W_pos = nn.Parameter(torch.empty(cfg.n_ctx, cfg.d_model))

    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
        batch, pos = tokens.shape
        return self.W_pos[:pos].expand(batch, pos, -1)  # a view: no copy per sequence


class Unembed(nn.Module):
    """logits = x @ W_U + b_U. Untied: W_U is this module's Parameter (named unembed.W_U, as in
    HookedTransformer). Tied: W_U is the embedding's W_E transposed, a view and no Parameter
    of its own, so the pair is one Parameter with one state-dict entry (embed.W_E)."""

    def __init__(self, cfg: ModelConfig, embed: Embed):
        super().__init__()
        self.tied = cfg.tie_embeddings
        # A plain attribute list keeps the embedding out of this module's state dict.
        self._embed = [embed]
        if not self.tied:
            self.W_U = nn.Parameter(torch.empty(cfg.d_model, cfg.d_vocab))
        if cfg.unembed_bias:
            self.b_U = nn.Parameter(torch.zeros(cfg.d_vocab))
        else:
            self.register_buffer("b_U", torch.zeros(cfg.d_vocab), persistent=False)

    def __getattr__(self, name: str):
        # Reached only when normal lookup fails: for a tied model W_U is no Parameter here.
        if name == "W_U" and self.__dict__.get("tied"):
            return self.__dict__["_embed"][0].table().T
        return super().__getattr__(name)

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_vocab"]:
        return x @ self.W_U + self.b_U


class LayerNorm(nn.Module):
    """Pre-LayerNorm with weight w (and bias b when cfg.ln_bias), hooks as in TransformerLens;
    torch's fused layer_norm computes it when nothing watches hook_scale or hook_normalized."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.eps = cfg.ln_eps
        self.bias = cfg.ln_bias
        self.w = nn.Parameter(torch.ones(cfg.d_model))
        if cfg.ln_bias:
            self.b = nn.Parameter(torch.zeros(cfg.d_model))
        else:
            self.register_buffer("b", torch.zeros(cfg.d_model), persistent=False)
        self.hook_scale = HookPoint()  # [batch, pos, 1]
        self.hook_normalized = HookPoint()  # [batch, pos, d_model]
        self.explicit = False  # True: always the explicit branch (MarkovTransformer.analysis)

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        # fused: the same function. Not under torch.func grad transforms: jacrev(jacrev) of
        # torch's layer_norm gets the weight's second derivatives wrong (torch 2.13; tested)
        fused = not self.explicit and not watched(self.hook_scale, self.hook_normalized)
        if fused and not under_grad_transform(x):
            return F.layer_norm(x, x.shape[-1:], self.w, self.b if self.bias else None, self.eps)
        x = x - x.mean(-1, keepdim=True)
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        return self.hook_normalized(x / scale) * self.w + self.b


class Attention(nn.Module):
    """Multi-head attention, causal, optionally restricted to a window: query n sees keys
    n - window .. n (REFERENCE section 3, the paper's --memory M).

    Two branches of one computation (nanoGPT's ``self.flash``): when a hook watches
    hook_attn_scores or hook_pattern (analysis, ``run_with_cache``), the scores and pattern
    are materialised; otherwise ``training.fused_attention`` computes the same function
    without them (a compiled CPU kernel that skips everything outside the band, or SDPA).
    hook_q/k/v/z/result fire in both. ``backend``: "auto" (the fused branch where it
    applies, with the compiled kernel where it measured faster than torch for the shape),
    "kernel" (the compiled kernel wherever it applies), "torch" (the fused branch without the
    compiled kernel: SDPA or the unfolded band) or "explicit" (always materialise).
    """

    def __init__(self, cfg: ModelConfig, window: int | None):
        super().__init__()
        self.cfg = cfg
        self.window = window
        self.backend = "auto"
        H, D, Dh = cfg.n_heads, cfg.d_model, cfg.d_head
        self.W_Q = nn.Parameter(torch.empty(H, D, Dh))
        self.W_K = nn.Parameter(torch.empty(H, D, Dh))
        self.W_V = nn.Parameter(torch.empty(H, D, Dh))
        self.W_O = nn.Parameter(torch.empty(H, Dh, D))
        for name, shape in (("b_Q", (H, Dh)), ("b_K", (H, Dh)), ("b_V", (H, Dh)), ("b_O", (D,))):
            if cfg.linear_bias:
                self.register_parameter(name, nn.Parameter(torch.zeros(shape)))
            else:
                self.register_buffer(name, torch.zeros(shape), persistent=False)
        self.hook_q = HookPoint()  # [batch, pos, head, d_head]
        self.hook_k = HookPoint()
        self.hook_v = HookPoint()
        self.hook_attn_scores = HookPoint()  # [batch, head, query_pos, key_pos], masked
        self.hook_pattern = HookPoint()  # [batch, head, query_pos, key_pos]
        self.hook_z = HookPoint()  # [batch, pos, head, d_head]
        self.hook_result = HookPoint()  # [batch, pos, head, d_model], with use_attn_result

    def mask(self, n: int, device: torch.device) -> Bool[Tensor, "pos pos"]:
        """Boolean [n, n]: query i may attend to key j iff i - window <= j <= i."""
        return band_mask(n, self.window, device)

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        H, E, bias = self.cfg.n_heads, self.cfg.d_head, self.cfg.linear_bias
        # q, k and v from one matmul (3x fewer skinny matmuls than one einsum each)
        W = torch.cat((self.W_Q, self.W_K, self.W_V)).transpose(0, 1)  # [d_model, 3H, d_head]
        qkv = (x @ W.flatten(1)).unflatten(-1, (3 * H, E))  # [batch, pos, 3H, d_head]
        if bias:
            qkv = qkv + torch.cat((self.b_Q, self.b_K, self.b_V))
        q, k, v = (
            hook(t)
            for hook, t in zip(
                (self.hook_q, self.hook_k, self.hook_v), qkv.split(H, -2), strict=True
            )
        )
        explicit = self.backend == "explicit" or watched(self.hook_attn_scores, self.hook_pattern)
        if not explicit and uses_fused(q):
            qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))  # [batch, head, pos, d_head]
            z = fused_attention(qh, kh, vh, self.window, kernel=self.backend).transpose(1, 2)
        else:
            scores = torch.einsum("bqhe,bkhe->bhqk", q, k) / math.sqrt(self.cfg.d_head)
            allowed = self.mask(x.shape[1], x.device)
            scores = self.hook_attn_scores(scores.masked_fill(~allowed, float("-inf")))
            pattern = self.hook_pattern(scores.softmax(dim=-1))
            z = torch.einsum("bhqk,bkhe->bqhe", pattern, v)
        z = self.hook_z(z)
        if self.cfg.use_attn_result:
            result = self.hook_result(torch.einsum("bqhe,hed->bqhd", z, self.W_O))
            return result.sum(dim=2) + self.b_O
        out = z.flatten(-2) @ self.W_O.flatten(0, 1)  # [batch, pos, d_model]
        return out + self.b_O if bias else out


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.W_in = nn.Parameter(torch.empty(cfg.d_model, cfg.d_mlp))
        self.W_out = nn.Parameter(torch.empty(cfg.d_mlp, cfg.d_model))
        for name, size in (("b_in", cfg.d_mlp), ("b_out", cfg.d_model)):
            if cfg.linear_bias:
                self.register_parameter(name, nn.Parameter(torch.zeros(size)))
            else:
                self.register_buffer(name, torch.zeros(size), persistent=False)
        self.act = F.gelu if cfg.act_fn == "gelu" else F.relu
        self.hook_pre = HookPoint()  # [batch, pos, d_mlp]
        self.hook_post = HookPoint()

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        pre = self.hook_pre(x @ self.W_in + self.b_in)
        return self.hook_post(self.act(pre)) @ self.W_out + self.b_out


class TransformerBlock(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.cfg = cfg
        norm = cfg.normalization_type == "LN"
        self.ln1 = LayerNorm(cfg) if norm else nn.Identity()
        self.attn = Attention(cfg, cfg.windows()[layer])
        if not cfg.attn_only:
            self.ln2 = LayerNorm(cfg) if norm else nn.Identity()
            self.mlp = MLP(cfg)
        self.hook_resid_pre = HookPoint()  # [batch, pos, d_model]
        self.hook_attn_out = HookPoint()
        self.hook_resid_mid = HookPoint()
        self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(
        self, resid: Float[Tensor, "batch pos d_model"]
    ) -> Float[Tensor, "batch pos d_model"]:
        resid = self.hook_resid_pre(resid)
        resid = resid + self.hook_attn_out(self.attn(self.ln1(resid)))
        if self.cfg.attn_only:
            return self.hook_resid_post(resid)
        resid = self.hook_resid_mid(resid)
        resid = resid + self.hook_mlp_out(self.mlp(self.ln2(resid)))
        return self.hook_resid_post(resid)


class MarkovTransformer(HookedRootModule):
    """Decoder-only transformer over token ids [batch, pos] (docs/theory.md section 3).

    forward(tokens) returns logits [batch, pos, d_vocab]; return_type="loss" gives the mean
    next-token cross-entropy (nats) over positions 0..pos-2, "per_token_loss" gives it per
    position [batch, pos-1], "both" gives (logits, loss).

    The weights start at `cfg.init` (training.inits): the paper init (init_weights, seeded
    from `seed` when given), then for "good" init_good and for "theta_pi" init_theta_pi.
    pi: the chain's stationary marginal, a tensor [d_vocab] of probabilities (float64, all
    > 0, summing to 1; e.g. training.references.stationary_marginal(chain)); required by
    init "theta_pi" (b_U = log pi), ignored by the other inits.
    The model keeps its own copy of `cfg` (shared by its submodules); the caller's is never
    changed.
    """

    def __init__(
        self, cfg: ModelConfig, seed: int | None = None, *, pi: Tensor | None = None
    ) -> None:
        super().__init__()
        if cfg.init == "theta_pi" and pi is None:
            raise ValueError(
                "init 'theta_pi' needs the chain's stationary marginal: "
                "MarkovTransformer(cfg, pi=stationary_marginal(chain))"
            )
        cfg = dataclasses.replace(cfg)  # its own copy: .to() records the device in it
        self.cfg = cfg
        self.embed = Embed(cfg)
        self.hook_embed = HookPoint()  # [batch, pos, d_model]
        if cfg.positional_embedding_type == "standard":
            self.pos_embed = PosEmbed(cfg)
            self.hook_pos_embed = HookPoint()
        self.blocks = nn.ModuleList(TransformerBlock(cfg, layer) for layer in range(cfg.n_layers))
        if cfg.normalization_type == "LN":
            self.ln_final = LayerNorm(cfg)
        else:
            self.ln_final = nn.Identity()
        self.unembed = Unembed(cfg, self.embed)
        self.init_weights(seed)
        apply_init(self, cfg.init, pi)
        self.cfg.dtype = self.embed.W_E.dtype  # not a config field: read by TransformerLens
        self.setup()

    # --- initialisation -----------------------------------------------------------------
    @torch.no_grad()
    def init_weights(self, seed: int | None = None) -> None:
        """The paper's init: N(0, init_range) on embeddings and linear maps, residual output
        projections (W_O, W_out) N(0, init_range / sqrt(2 n_layers)), LayerNorm w = 1, biases 0.
        Seeded from `seed` when given (same seed, same weights). The constructor applies
        cfg.init's named init after it; calling this later gives the paper init alone."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        std = self.cfg.init_range
        resid_std = std / math.sqrt(2 * self.cfg.n_layers)
        for name, param in self.named_parameters():
            leaf = name.split(".")[-1]
            if leaf in ("w",):
                param.fill_(1.0)
            elif leaf.startswith("b_") or leaf == "b":
                param.zero_()
            else:
                s = resid_std if leaf in ("W_O", "W_out") else std
                param.copy_(torch.randn(param.shape, generator=gen) * s)
        if self.cfg.token_embedding == "linear":
            self.embed.W_E[0].zero_()  # token 0 is the zero vector

    # --- device bookkeeping -------------------------------------------------------------
    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        self.cfg.device = str(self.embed.W_E.device)
        self.cfg.dtype = self.embed.W_E.dtype  # not a config field: read by TransformerLens
        return out

    # --- HookedTransformer's weight API: stacked over layers ------------------------------
    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab"]:
        return self.unembed.W_U

    @property
    def b_U(self) -> Float[Tensor, "d_vocab"]:
        return self.unembed.b_U

    @property
    def W_E(self) -> Float[Tensor, "d_vocab d_model"]:
        return self.embed.W_E

    @property
    def W_pos(self) -> Float[Tensor, "n_ctx d_model"]:
        """Positional embeddings (zeros without them, as the export writes)."""
        if self.cfg.positional_embedding_type == "standard":
            return self.pos_embed.W_pos
        return self.W_E.new_zeros(self.cfg.n_ctx, self.cfg.d_model)

    @property
    def W_E_pos(self) -> Float[Tensor, "d_vocab_plus_n_ctx d_model"]:
        return torch.cat([self.embed.table(), self.W_pos], dim=0)

    def _stack(self, path: str) -> Tensor:
        """blocks[l].<path> for every layer, stacked on a new leading axis [n_layers, ...]."""
        module, name = path.split(".")
        if module == "mlp" and self.cfg.attn_only:
            raise AttributeError(name)  # attention-only: no MLP weights
        return torch.stack([getattr(getattr(b, module), name) for b in self.blocks])

    W_Q = property(lambda self: self._stack("attn.W_Q"), doc="[n_layers, n_heads, d_model, d_head]")
    W_K = property(lambda self: self._stack("attn.W_K"), doc="[n_layers, n_heads, d_model, d_head]")
    W_V = property(lambda self: self._stack("attn.W_V"), doc="[n_layers, n_heads, d_model, d_head]")
    W_O = property(lambda self: self._stack("attn.W_O"), doc="[n_layers, n_heads, d_head, d_model]")
    b_Q = property(lambda self: self._stack("attn.b_Q"), doc="[n_layers, n_heads, d_head]")
    b_K = property(lambda self: self._stack("attn.b_K"), doc="[n_layers, n_heads, d_head]")
    b_V = property(lambda self: self._stack("attn.b_V"), doc="[n_layers, n_heads, d_head]")
    b_O = property(lambda self: self._stack("attn.b_O"), doc="[n_layers, d_model]")
    W_in = property(lambda self: self._stack("mlp.W_in"), doc="[n_layers, d_model, d_mlp]")
    W_out = property(lambda self: self._stack("mlp.W_out"), doc="[n_layers, d_mlp, d_model]")
    b_in = property(lambda self: self._stack("mlp.b_in"), doc="[n_layers, d_mlp]")
    b_out = property(lambda self: self._stack("mlp.b_out"), doc="[n_layers, d_model]")

    @property
    def QK(self) -> FactoredMatrix:
        """W_Q W_K^T per layer and head: [n_layers, n_heads, d_model, d_model], factored."""
        return FactoredMatrix(self.W_Q, self.W_K.transpose(-2, -1))

    @property
    def OV(self) -> FactoredMatrix:
        """W_V W_O per layer and head: [n_layers, n_heads, d_model, d_model], factored."""
        return FactoredMatrix(self.W_V, self.W_O)

    # --- HookedTransformer's weight processing, in place ---------------------------------
    @torch.no_grad()
    def process_weights(
        self,
        fold_ln: bool = True,
        center_writing_weights: bool = True,
        center_unembed: bool = True,
        fold_value_biases: bool = True,
    ) -> None:
        """HookedTransformer's load-time weight processing, in place, by TransformerLens's own
        ``ProcessWeights.process_weights`` on ``hooked_state_dict()``: fold the LayerNorm
        weights and biases into the next linear maps (LayerNorm w = 1, b = 0 after), centre the
        weights writing to the residual stream (W_E, W_pos, W_O, W_out along d_model), centre
        W_U and b_U over the vocabulary (every logit at a position moves by one constant: the
        log-probabilities stay) and fold b_V into b_O. The same processing as the export's
        ``enable_compatibility_mode()``. ValueError (weights unchanged) when this model cannot
        hold the result, e.g. a tied model (W_U would no longer be W_E^T) or a bias the config
        disables that would become nonzero."""
        from transformer_lens.weight_processing import ProcessWeights

        from training.bridge_config import bridge_config

        processed = ProcessWeights.process_weights(
            self.hooked_state_dict(),
            bridge_config(self.cfg, dtype=self.W_E.dtype),
            fold_ln=fold_ln and self.cfg.normalization_type == "LN",
            center_writing_weights=center_writing_weights,
            center_unembed=center_unembed,
            fold_value_biases=fold_value_biases,
        )
        self.load_hooked_state_dict(processed)

    def fold_layer_norm(self) -> None:
        """Fold every LayerNorm's weight and bias into the next linear map (process_weights)."""
        self.process_weights(True, False, False, False)

    def center_writing_weights(self) -> None:
        """Centre W_E, W_pos, W_O, b_O, W_out, b_out along d_model (process_weights)."""
        self.process_weights(False, True, False, False)

    def center_unembed(self) -> None:
        """Centre W_U and b_U over the vocabulary (process_weights)."""
        self.process_weights(False, False, True, False)

    @torch.no_grad()
    def load_hooked_state_dict(self, state: dict[str, Tensor]) -> None:
        """Load a state dict in ``hooked_state_dict()``'s format. ValueError, with the model
        unchanged, naming the entries this model cannot hold (a tied W_U that is not W_E^T, a
        disabled bias that is not zero, a "linear" embedding whose row 0 is not zero)."""
        before = self.hooked_state_dict()
        if set(state) != set(before):
            raise ValueError(
                f"state dict keys differ: missing {sorted(set(before) - set(state))}, "
                f"unexpected {sorted(set(state) - set(before))}"
            )
        own = self.state_dict()
        self.load_state_dict({k: state[k] for k in own}, strict=True)
        after = self.hooked_state_dict()
        bad = [k for k in state if not torch.equal(after[k], state[k].to(after[k]))]
        if bad:
            self.load_state_dict({k: before[k] for k in own}, strict=True)
            raise ValueError(
                f"this model's config cannot hold the processed weights {bad} "
                f"(tie_embeddings={self.cfg.tie_embeddings}, linear_bias={self.cfg.linear_bias}, "
                f"ln_bias={self.cfg.ln_bias}, unembed_bias={self.cfg.unembed_bias}, "
                f"token_embedding={self.cfg.token_embedding!r}); process the TransformerLens "
                "export instead (training.interop.to_transformerlens)"
            )

    # --- forward ------------------------------------------------------------------------
    def check_tokens(self, tokens: Tensor) -> Int[Tensor, "batch pos"]:
        if not isinstance(tokens, Tensor):
            raise ValueError(f"tokens must be a torch.Tensor of ids, got {type(tokens).__name__}")
        if tokens.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
            raise ValueError(f"tokens must be an integer tensor, got dtype {tokens.dtype}")
        if tokens.ndim == 1:
            tokens = tokens[None]
        if tokens.ndim != 2:
            raise ValueError(f"tokens must have shape [batch, pos], got {tuple(tokens.shape)}")
        if tokens.shape[1] > self.cfg.n_ctx:
            raise ValueError(
                f"sequence length {tokens.shape[1]} is longer than n_ctx={self.cfg.n_ctx}"
            )
        if torch._C._functorch.is_batchedtensor(tokens):
            return tokens.long()  # under vmap (stacked runs): the caller checks the stack
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.cfg.d_vocab):
            bad = int(tokens.min()) if tokens.min() < 0 else int(tokens.max())
            raise ValueError(f"token id {bad} is outside the vocabulary 0..{self.cfg.d_vocab - 1}")
        return tokens.long()

    def forward(
        self,
        tokens: Int[Tensor, "batch pos"],
        return_type: Literal["logits", "loss", "per_token_loss", "both"] | None = "logits",
    ):
        tokens = self.check_tokens(tokens)
        resid = self.hook_embed(self.embed(tokens))
        if self.cfg.positional_embedding_type == "standard":
            resid = resid + self.hook_pos_embed(self.pos_embed(tokens))
        for block in self.blocks:
            resid = block(resid)
        logits = self.unembed(self.ln_final(resid))
        if return_type in ("logits", None):
            return logits
        if return_type == "per_token_loss":
            return per_token_loss(logits, tokens)
        if return_type == "loss":
            return per_token_loss(logits, tokens).mean()
        if return_type == "both":
            return logits, per_token_loss(logits, tokens).mean()
        raise ValueError(
            f"return_type must be 'logits', 'loss', 'per_token_loss' or 'both', got {return_type!r}"
        )

    def run_with_cache(self, *model_args, return_cache_object: bool = True, **kwargs):
        """Run the model and cache activations, as HookedTransformer.run_with_cache: returns
        (output, ActivationCache), or a plain dict with return_cache_object=False."""
        out, cache_dict = super().run_with_cache(*model_args, **kwargs)
        if not return_cache_object:
            return out, cache_dict
        has_batch_dim = not kwargs.get("remove_batch_dim", False)
        return out, ActivationCache(cache_dict, self, has_batch_dim=has_batch_dim)

    # --- tokens as text, and sampling ----------------------------------------------------
    @property
    def tokenizer(self):
        """The chain alphabet's tokenizer (training.tokenizer.ChainTokenizer), built on first
        use: "0" .. str(d_vocab - 1) and an end token, as TransformerLens expects."""
        if "_tokenizer" not in self.__dict__:
            from training.tokenizer import ChainTokenizer

            self.__dict__["_tokenizer"] = ChainTokenizer(self.cfg.d_vocab)
        return self.__dict__["_tokenizer"]

    def to_tokens(self, text: str | list[str], **_ignored) -> Int[Tensor, "batch pos"]:
        """Token ids of text such as "0 1 1 0" (or "0110" with at most 10 states), on the
        model's device; a list of strings gives one row each, padded with the end token.
        Keyword arguments of HookedTransformer.to_tokens (prepend_bos ...) are ignored: this
        vocabulary has no BOS."""
        ids = self.tokenizer(text if isinstance(text, list) else [text], padding=True)
        return torch.tensor(ids["input_ids"], dtype=torch.long, device=self.W_E.device)

    def to_str_tokens(self, tokens: Tensor | str | list, **_ignored) -> list[str] | list:
        """Each token as its string, e.g. ["0", "1", "1"]; a [batch, pos] tensor or a list of
        inputs gives a list per sequence."""
        if isinstance(tokens, str):
            tokens = self.to_tokens(tokens)[0]
        if isinstance(tokens, list):
            return [self.to_str_tokens(t) for t in tokens]
        tokens = torch.as_tensor(tokens)
        if tokens.ndim == 2 and tokens.shape[0] > 1:
            return [self.to_str_tokens(row) for row in tokens]
        return self.tokenizer.batch_decode([[int(t)] for t in tokens.reshape(-1).tolist()])

    def to_string(self, tokens: Int[Tensor, "... pos"]) -> str | list[str]:
        """The text of a sequence of ids (a list of texts for [batch, pos])."""
        tokens = torch.as_tensor(tokens)
        if tokens.ndim == 2:
            return [self.tokenizer.decode(row.tolist()) for row in tokens]
        return self.tokenizer.decode(tokens.tolist())

    @torch.no_grad()
    def generate(
        self,
        tokens: Int[Tensor, "batch pos"] | str,
        max_new_tokens: int,
        temperature: float = 1.0,
        seed: int | None = None,
    ) -> Int[Tensor, "batch pos_plus_new"]:
        """Continue each sequence by `max_new_tokens` tokens sampled from the model's next-token
        distribution softmax(logits / temperature) (temperature 0: the most likely token).
        With `seed`, a generator of its own (same seed, same tokens; the global RNG is left
        alone). Text input is tokenized first. The result, prompt included, must fit n_ctx."""
        if isinstance(tokens, str):
            tokens = self.to_tokens(tokens)
        tokens = self.check_tokens(tokens).to(self.W_E.device)
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int):
            raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
        if max_new_tokens < 0 or tokens.shape[1] + max_new_tokens > self.cfg.n_ctx:
            raise ValueError(
                f"max_new_tokens={max_new_tokens} must be >= 0 and fit the context: "
                f"{tokens.shape[1]} prompt tokens + {max_new_tokens} > n_ctx={self.cfg.n_ctx}"
            )
        if not (isinstance(temperature, (int, float)) and temperature >= 0):
            raise ValueError(f"temperature must be a number >= 0, got {temperature!r}")
        gen = None
        if seed is not None:
            gen = torch.Generator(device=tokens.device).manual_seed(seed)
        for _ in range(max_new_tokens):  # each token depends on the one before: sequential
            logits = self(tokens)[:, -1].double()
            if temperature == 0:
                nxt = logits.argmax(-1, keepdim=True)
            else:
                probs = (logits / temperature).softmax(-1)
                nxt = torch.multinomial(probs, 1, generator=gen)
            tokens = torch.cat([tokens, nxt], dim=1)
        return tokens

    # --- helpers TransformerLens's ActivationCache calls ---------------------------------
    def tokens_to_residual_directions(self, tokens) -> Float[Tensor, "... d_model"]:
        """Direction in the normalised residual stream whose dot product is the token's logit
        (minus b_U): ln_final.w * W_U[:, token], since this model's final LayerNorm weight is
        not folded into W_U."""
        tokens = torch.as_tensor(tokens, device=self.W_E.device)
        directions = self.W_U[:, tokens]
        directions = einops.rearrange(directions, "d_model ... -> ... d_model")
        if isinstance(self.ln_final, LayerNorm):
            directions = directions * self.ln_final.w
        return directions

    def accumulated_bias(
        self, layer: int, mlp_input: bool = False, include_mlp_biases: bool = True
    ) -> Float[Tensor, "d_model"]:
        """Sum of the attention and MLP output biases up to `layer` (zero without linear_bias)."""
        bias = torch.zeros(self.cfg.d_model, device=self.W_E.device)
        for i, block in enumerate(self.blocks):
            if i > layer or (i == layer and not mlp_input):
                break
            bias = bias + block.attn.b_O
            if i < layer and include_mlp_biases and not self.cfg.attn_only:
                bias = bias + block.mlp.b_out
        return bias

    def to_single_token(self, token) -> int:
        return int(token)

    def set_fused_attention(self, enabled: bool) -> None:
        """enabled=False: every layer takes the explicit attention branch (scores and pattern
        materialised) even when no hook watches them; True (default): the fused branch
        whenever nothing watches them."""
        self.set_attention_backend("auto" if enabled else "explicit")

    def set_attention_backend(self, backend: str) -> None:
        """Every layer's Attention.backend: "auto", "torch" or "explicit" (see Attention)."""
        if backend not in ATTENTION_BACKENDS:
            raise ValueError(
                f"attention backend must be one of {ATTENTION_BACKENDS}, got {backend!r}"
            )
        for block in self.blocks:
            block.attn.backend = backend

    @contextlib.contextmanager
    def analysis(self) -> Iterator[MarkovTransformer]:
        """Within ``with model.analysis():`` every attention layer and LayerNorm takes its
        explicit branch, so hook_attn_scores, hook_pattern, hook_scale and hook_normalized fire
        on every forward whoever listens (hooks are detected anyway, see ``watched``; this is
        for tools that attach them some other way). Restores each layer's previous backend."""
        saved = [(block.attn, block.attn.backend) for block in self.blocks]
        norms = [m for m in self.modules() if isinstance(m, LayerNorm)]
        explicit = [(m, m.explicit) for m in norms]
        try:
            self.set_attention_backend("explicit")
            for m in norms:
                m.explicit = True
            yield self
        finally:
            for attn, backend in saved:
                attn.backend = backend
            for m, value in explicit:
                m.explicit = value

    def set_use_attn_result(self, value: bool) -> None:
        self.cfg.use_attn_result = value

    def hooked_state_dict(self) -> dict[str, Tensor]:
        """State dict in HookedTransformer format (W_U and disabled biases written out), as
        TransformerLens's `convert_tl_checkpoint` expects."""
        out = {k: v.detach().clone() for k, v in self.state_dict().items()}
        out["embed.W_E"] = self.embed.table().detach().clone()
        out["unembed.W_U"] = self.W_U.detach().clone()
        out["unembed.b_U"] = self.unembed.b_U.detach().clone()
        for layer, block in enumerate(self.blocks):
            for name in ("b_Q", "b_K", "b_V", "b_O"):
                out[f"blocks.{layer}.attn.{name}"] = getattr(block.attn, name).detach().clone()
            if not self.cfg.attn_only:
                for name in ("b_in", "b_out"):
                    out[f"blocks.{layer}.mlp.{name}"] = getattr(block.mlp, name).detach().clone()
            for ln in ("ln1", "ln2"):
                mod = getattr(block, ln, None)
                if isinstance(mod, LayerNorm):
                    out[f"blocks.{layer}.{ln}.b"] = mod.b.detach().clone()
        if isinstance(self.ln_final, LayerNorm):
            out["ln_final.b"] = self.ln_final.b.detach().clone()
        return out


def per_token_loss(
    logits: Float[Tensor, "batch pos d_vocab"], tokens: Int[Tensor, "batch pos"]
) -> Float[Tensor, "batch pos_minus_1"]:
    """Cross-entropy (nats) of predicting tokens[:, n+1] from logits[:, n]."""
    log_probs = logits[:, :-1].log_softmax(dim=-1)
    return -log_probs.gather(-1, tokens[:, 1:, None]).squeeze(-1)
