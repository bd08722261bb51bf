"""Attention patterns: extraction, the relative-offset profile, heatmaps and an offline HTML view.

A pattern tensor is laid out [layer, batch, head, query, key]: ``patterns[l, b, h, i, j]`` is
the weight position i of sequence b puts on position j in head h of layer l (rows sum to 1
over the allowed keys j <= i, and j >= i - M under an attention window M).

The offset profile is the mean weight at relative offset d = i - j (d = 0: the token itself,
d = 1: the previous token, ...), averaged over every query i >= d; it is what the window
("masking", docs/theory.md section 3) experiments change.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from jaxtyping import Float, Int
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torch import Tensor

from training.model import MarkovTransformer
from training.runs import write_text_atomic

TOKEN_LABEL_MAX = 32  # label the axes with token values up to this sequence length


def pattern_hook_names(model: MarkovTransformer) -> list[str]:
    """``blocks.{l}.attn.hook_pattern`` for every layer."""
    return [f"blocks.{layer}.attn.hook_pattern" for layer in range(model.cfg.n_layers)]


@torch.no_grad()
def attention_patterns(
    model: MarkovTransformer, tokens: Int[Tensor, "batch pos"]
) -> Float[Tensor, "layer batch head query key"]:
    """Attention patterns of every layer and head on ``tokens``, one cached forward pass."""
    tokens = model.check_tokens(tokens).to(model.W_E.device)
    names = pattern_hook_names(model)
    _, cache = model.run_with_cache(
        tokens, names_filter=lambda name: name in names, return_cache_object=False
    )
    return torch.stack([cache[name] for name in names])


def offset_profile(
    patterns: Float[Tensor, "... query key"], max_offset: int | None = None
) -> Float[Tensor, "... offset"]:
    """Mean attention weight at relative offset d = i - j, d = 0..D-1 (D = max_offset + 1,
    default the sequence length): for each d the average of ``patterns[..., i, i - d]`` over
    the queries i >= d. Diagonals are gathered at once (no loop over positions)."""
    n_query, n_key = patterns.shape[-2:]
    if n_query != n_key:
        raise ValueError(f"patterns must be square in (query, key), got {n_query} x {n_key}")
    if max_offset is not None and (not isinstance(max_offset, int) or max_offset < 0):
        raise ValueError(f"max_offset must be an int >= 0 or None, got {max_offset!r}")
    n = n_query
    n_offsets = n if max_offset is None else min(max_offset + 1, n)
    i = torch.arange(n, device=patterns.device)[:, None]
    d = torch.arange(n_offsets, device=patterns.device)[None, :]
    valid = i >= d  # [query, offset]
    keys = (i - d).clamp_min(0).expand(*patterns.shape[:-2], n, n_offsets)
    diagonals = patterns.gather(-1, keys)  # [..., query, offset]: patterns[..., i, i - d]
    return (diagonals * valid).sum(-2) / valid.sum(0)


def uniform_like(patterns: Float[Tensor, "... query key"]) -> Float[Tensor, "... query key"]:
    """Uniform attention over the keys each query of ``patterns`` can see (those with a
    nonzero weight: the causal mask and any attention window), 1 / #keys on each: the
    reference a head that ignores both content and position would score."""
    allowed = (patterns > 0).to(patterns.dtype)
    return allowed / allowed.sum(-1, keepdim=True).clamp_min(1)


def mean_attended_distance(
    patterns: Float[Tensor, "... query key"],
) -> Float[Tensor, "..."]:
    """Average over queries of sum_j A[i, j] (i - j): how far back a head looks, in tokens."""
    n = patterns.shape[-1]
    pos = torch.arange(n, device=patterns.device, dtype=patterns.dtype)
    distance = (pos[:, None] - pos[None, :]).clamp_min(0)
    return (patterns * distance).sum(-1).mean(-1)


def attention_summary(
    patterns: Float[Tensor, "layer batch head query key"], max_offset: int = 16
) -> dict:
    """JSON-able summary: per layer and head the batch-mean offset profile (offsets
    0..max_offset), the weight on the token itself (d = 0) and on the previous one (d = 1),
    and the mean attended distance (tokens); per layer the offset profile of uniform
    attention over the same keys (``uniform_like``), uniform_profile [layer][offset]."""
    profile = offset_profile(patterns, max_offset).mean(1)  # [layer, head, offset]
    uniform = offset_profile(uniform_like(patterns), max_offset).mean((1, 2))  # [layer, offset]
    distance = mean_attended_distance(patterns).mean(1)  # [layer, head]
    return {
        "offsets": list(range(profile.shape[-1])),
        "offset_profile": profile.tolist(),
        "self_weight": profile[..., 0].tolist(),
        "previous_weight": (
            profile[..., 1] if profile.shape[-1] > 1 else profile[..., 0] * 0
        ).tolist(),
        "mean_distance": distance.tolist(),
        "uniform_profile": uniform.tolist(),
        "layout": "[layer][head][offset]",
    }


# --------------------------------------------------------------------------------- figures


def plot_patterns(
    patterns: Float[Tensor, "layer head query key"],
    tokens: Int[Tensor, " pos"] | None = None,
    title: str = "attention patterns",
) -> Figure:
    """Heatmap grid, one panel per (layer, head) (rows: layers, columns: heads). Pass one
    sequence's patterns (``patterns[:, b]``) or a batch mean (``patterns.mean(1)``); with
    ``tokens`` and at most 32 positions the axes show the token values. Colour: log2 of the
    weight relative to uniform attention 1/(q+1) over the q+1 visible keys, on a diverging
    scale centred on 0 (white = uniform), so that near-uniform attention and its departures
    show (a linear 0-1 scale draws a long sequence's weights, about 1/n, uniformly dark)."""
    if patterns.ndim != 4:
        raise ValueError(
            f"patterns must be [layer, head, query, key], got shape {tuple(patterns.shape)}"
        )
    n_layers, n_heads, n, _ = patterns.shape
    data = patterns.detach().double().cpu().numpy()
    mask = np.triu(np.ones((n, n), dtype=bool), k=1)
    visible = np.arange(1, n + 1, dtype=float)[:, None]  # keys 0..q seen by query q
    with np.errstate(divide="ignore"):
        rel = np.log2(np.clip(data * visible, 1e-12, None))
    bound = float(np.abs(np.where(mask, 0.0, rel)).max())
    bound = max(bound, 0.05)  # a perfectly uniform pattern: a white field and a legible scale
    fig, axes = plt.subplots(
        n_layers,
        n_heads,
        figsize=(3.2 * n_heads + 0.8, 3.0 * n_layers + 0.6),
        squeeze=False,
        constrained_layout=True,
    )
    labels = None
    if tokens is not None and n <= TOKEN_LABEL_MAX:
        labels = [str(int(t)) for t in tokens.tolist()]
    image = None
    for layer in range(n_layers):
        for head in range(n_heads):
            ax = axes[layer, head]
            shown = np.ma.masked_array(rel[layer, head], mask=mask)
            image = ax.imshow(
                shown, vmin=-bound, vmax=bound, cmap="RdBu_r", interpolation="nearest"
            )
            ax.set_title(f"L{layer}H{head}", fontsize=9)
            if labels is not None:
                ax.set_xticks(range(n), labels, fontsize=6)
                ax.set_yticks(range(n), labels, fontsize=6)
            if layer == n_layers - 1:
                ax.set_xlabel("key position (token)" if labels else "key position")
            if head == 0:
                ax.set_ylabel("query position (token)" if labels else "query position")
    fig.colorbar(
        image, ax=axes, shrink=0.8, label="log2(attention x (q+1)): 0 = uniform, 1 = twice"
    )
    fig.suptitle(title, fontsize=10)
    return fig


def draw_uniform_profile(ax, uniform: Float[Tensor, "layer offset"] | None, colour="k") -> None:
    """The offset profile of uniform attention (``attention_summary``'s uniform_profile):
    one dotted line, or one per layer where the layers' windows differ."""
    if uniform is None:
        return
    u = torch.as_tensor(uniform, dtype=torch.float64)
    u = u.reshape(-1, u.shape[-1]).cpu().numpy()
    distinct = [u[0]] if np.allclose(u, u[0], rtol=0, atol=1e-12) else list(u)
    for layer, line in enumerate(distinct):
        label = "uniform attention" + (f" (layer {layer})" if len(distinct) > 1 else "")
        ax.plot(np.arange(len(line)), line, color=colour, ls=":", lw=1.4, label=label, zorder=1)


def plot_offset_profile(
    profile: Float[Tensor, "layer head offset"],
    title: str = "attention by relative offset",
    uniform: Float[Tensor, "layer offset"] | None = None,
) -> Figure:
    """Mean attention weight against offset d = i - j, one line per (layer, head), with
    uniform attention over the same keys (``uniform``: attention_summary's uniform_profile)
    dotted for reference; the y range fits the data (weights of a long sequence are ~1/n)."""
    if profile.ndim != 3:
        raise ValueError(f"profile must be [layer, head, offset], got {tuple(profile.shape)}")
    data = profile.detach().float().cpu().numpy()
    fig, ax = plt.subplots(figsize=(5.5, 3.6), constrained_layout=True)
    offsets = np.arange(data.shape[-1])
    for layer in range(data.shape[0]):
        for head in range(data.shape[1]):
            ax.plot(offsets, data[layer, head], marker="o", ms=3, label=f"L{layer}H{head}")
    draw_uniform_profile(ax, uniform)
    ax.set_xlabel("offset d = i - j (0 = the token itself)")
    ax.set_ylabel("mean attention weight")
    ax.margins(y=0.08)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=max(1, data.shape[1]))
    return fig


# ------------------------------------------------------------------------ offline HTML view


def circuitsvis_bundle_path() -> Path:
    """The JavaScript bundle shipped inside the installed circuitsvis package (dist/**.js;
    the self-contained "iife" build defining the global ``CircuitsVis``)."""
    import circuitsvis

    root = Path(circuitsvis.__file__).parent
    candidates = sorted(root.rglob("*.js"))
    iife = [p for p in candidates if p.name.startswith("iife")]
    if not (iife or candidates):
        raise FileNotFoundError(f"no JavaScript bundle (*.js) found under {root}")
    return (iife or candidates)[0]


def circuitsvis_bundle() -> str:
    """The bundle's source, safe to inline in a <script> element (closing script tags escaped,
    source-map comment removed so the page makes no request at all)."""
    source = circuitsvis_bundle_path().read_text(encoding="utf-8")
    lines = [ln for ln in source.splitlines() if not ln.startswith("//# sourceMappingURL")]
    source = "\n".join(lines)
    return source.replace("</script", "<\\/script").replace("</SCRIPT", "<\\/SCRIPT")


def attention_html(
    patterns: Float[Tensor, "layer head query key"],
    tokens: Int[Tensor, " pos"],
    title: str = "attention patterns",
) -> str:
    """A self-contained HTML page: circuitsvis AttentionHeads for every layer of one sequence,
    with the circuitsvis bundle inlined once (no CDN, works offline)."""
    if patterns.ndim != 4:
        raise ValueError(
            f"patterns must be [layer, head, query, key], got shape {tuple(patterns.shape)}"
        )
    n_layers, n_heads, n, _ = patterns.shape
    if len(tokens) != n:
        raise ValueError(f"got {len(tokens)} tokens for patterns over {n} positions")
    token_strings = [f"{int(t)}" for t in tokens.tolist()]
    blocks = []
    for layer in range(n_layers):
        props = {
            "attention": patterns[layer].detach().float().cpu().tolist(),
            "tokens": token_strings,
            "attentionHeadNames": [f"L{layer}H{h}" for h in range(n_heads)],
            "maskUpperTri": True,
        }
        div = f"cv-layer-{layer}"
        payload = json.dumps(props).replace("</", "<\\/")
        blocks.append(
            f'<h2>Layer {layer}</h2>\n<div id="{div}"></div>\n'
            f"<script>CircuitsVis.render({json.dumps(div)}, CircuitsVis.AttentionHeads, "
            f"{payload});</script>"
        )
    body = "\n".join(blocks)
    return (
        '<!DOCTYPE html>\n<html>\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n"
        f"<script>\n{circuitsvis_bundle()}\n</script>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n{body}\n</body>\n</html>\n"
    )


def write_attention_html(
    path: str | Path,
    patterns: Float[Tensor, "layer head query key"],
    tokens: Int[Tensor, " pos"],
    title: str = "attention patterns",
    overwrite: bool = False,
) -> Path:
    """Write ``attention_html(...)`` to ``path``; FileExistsError if it exists and not overwrite."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists (pass overwrite=True / --force)")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, attention_html(patterns, tokens, title))
    return path
