"""The verdict in one call: does the prediction's dependence on x_n flow through attention, the
MLP, the direct path, or nowhere (a unigram solution)?

``explain_model`` runs, on fresh sequences from the run's chain:

- attention patterns, the relative-offset profile and head scores (interp.attention / heads);
- direct logit attribution at the readout (interp.attribution);
- for each corruption (flip x_n, resample x_n, and kernel_swap for in-context chains): the
  model's reaction M_clean - M_corrupt against a perfect predictor's (the flip ratio), the
  direct-path shares (interp.patching.direct_path_effects), and denoising / noising sweeps
  over resid_pre, attn_out, mlp_out and every head's z at every position;
- mean and resample ablation of attn_out, mlp_out and each head (at x_n and everywhere).

Mechanistic verdict (metric: logit difference, corruption: flip x_n), ratio rho = model effect /
true effect, with its 95% interval rho +- 1.96 se (delta method over the pairs,
``interp.measurement.ratio_interval``): "bigram" if the interval is >= 0.5 (the output follows
x_n), "unigram" if it lies within [-0.1, 0.1] (it ignores x_n: the marginal solution),
"partial" if it lies within [0.1, 0.5] or below -0.1, "undecided" when it reaches across a
threshold, "undetermined" when the true law does not depend on x_n (|true effect| < 1e-3,
e.g. p + q = 1). The sample is ``interp.measurement.MeasurementSpec``'s flip sample (64
sequences of the training length capped at 128, seed 0), the one ``report`` uses too.

``explain_run(RUN_DIR)`` / ``markov-lens explain RUN_DIR`` write report.md, explain.json and PNGs.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from interp.attention import (
    attention_patterns,
    attention_summary,
    offset_profile,
    plot_offset_profile,
    plot_patterns,
)
from interp.attribution import logit_attribution
from interp.corruptions import CORRUPTIONS, make_patching_data
from interp.heads import head_scores
from interp.measurement import MeasurementSpec, Sample, classify_interval
from interp.patching import (
    DEFAULT_BUDGET,
    METRICS,
    cache_run,
    cache_runs,
    direct_path_effects,
    run_ablation,
    run_patching,
)
from interp.patching.plots import plot_direct_paths, plot_patching_result
from training.chains import InContextChain, MarkovChain
from training.jsonconfig import JsonConfig
from training.model import MarkovTransformer
from training.runs import (
    display_name,
    load_run,
    savefig_atomic,
    step_dir_name,
    write_text_atomic,
)

BIGRAM_RATIO = 0.5
UNIGRAM_RATIO = 0.1
TRUE_EFFECT_MIN = 1e-3
PATCH_ACTS = ("resid_pre", "attn_out", "mlp_out", "z")
ABLATE_ACTS = ("attn_out", "mlp_out", "z")
METRIC_WORDS = {"logit_diff": "logit difference", "logprob": "log-probability of x_{N+1}"}
SPEC = MeasurementSpec()
Z_INTERVAL = SPEC.z_interval


@dataclass
class ExplainConfig(JsonConfig):
    """What ``explain_model`` samples and measures; the defaults are MeasurementSpec's flip
    sample. seq_len None: the run's training length capped at 128 and n_ctx. corruptions
    None: flip and resample (+ kernel_swap in-context)."""

    config_name = "explain config"

    n_seqs: int = SPEC.flip_seqs
    seq_len: int | None = None
    seed: int = SPEC.seed
    metric: str = "logit_diff"
    corruptions: list[str] | None = None
    budget: int = DEFAULT_BUDGET

    def __post_init__(self) -> None:
        if not isinstance(self.n_seqs, int) or self.n_seqs < 1:
            raise ValueError(f"n_seqs must be a positive int, got {self.n_seqs!r}")
        if self.seq_len is not None and (not isinstance(self.seq_len, int) or self.seq_len < 2):
            raise ValueError(f"seq_len must be an int >= 2 or None, got {self.seq_len!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {self.seed!r}")
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {self.metric!r}")
        for c in self.corruptions or []:
            if c not in CORRUPTIONS:
                raise ValueError(f"unknown corruption {c!r}; allowed: {CORRUPTIONS}")


def default_corruptions(chain: MarkovChain) -> list[str]:
    extra = ["kernel_swap"] if isinstance(chain, InContextChain) else []
    return ["flip", "resample", *extra]


def resolve_seq_len(model: MarkovTransformer, seq_len: int | None, train_len: int | None) -> int:
    """The sequence length to analyse: ``seq_len`` if given (checked against n_ctx), else
    MeasurementSpec's flip sample length (the training length capped at 128 and n_ctx)."""
    n_ctx = model.cfg.n_ctx
    if seq_len is None:
        return SPEC.flip_sample(train_len, n_ctx).seq_len
    if seq_len > n_ctx:
        raise ValueError(f"seq_len {seq_len} is longer than the model's n_ctx={n_ctx}")
    return seq_len


VERDICT_BANDS = [
    ("bigram", BIGRAM_RATIO, math.inf),
    ("unigram", -UNIGRAM_RATIO, UNIGRAM_RATIO),
    ("partial", UNIGRAM_RATIO, BIGRAM_RATIO),
    ("partial", -math.inf, -UNIGRAM_RATIO),
]


def mechanistic_verdict(
    effect: float, true_effect: float, ratio_se: float = float("nan"), z: float = Z_INTERVAL
) -> tuple[str, float]:
    """(verdict, rho) from the flip logit-diff effect of the model and of the true law; with
    the ratio's standard error, "undecided" when rho +- z se reaches across a threshold."""
    if abs(true_effect) < TRUE_EFFECT_MIN:
        return "undetermined", float("nan")
    rho = effect / true_effect
    return classify_interval(rho, ratio_se, z, VERDICT_BANDS), rho


@dataclass
class Explanation:
    """Everything ``explain_model`` measured; ``to_dict`` is JSON-able, the tensors feed figures."""

    summary: dict
    patterns_example: torch.Tensor  # [layer, head, query, key] of one sequence
    patterns_mean: torch.Tensor  # [layer, head, query, key], batch mean
    example_tokens: torch.Tensor
    profile: torch.Tensor  # [layer, head, offset]
    patching: dict = field(default_factory=dict)  # corruption -> direction -> PatchingResult

    def to_dict(self) -> dict:
        out = dict(self.summary)
        out["patching"] = {
            c: {d: r.to_dict() for d, r in by_dir.items()} for c, by_dir in self.patching.items()
        }
        return out


def analyse_attention(model: MarkovTransformer, tokens: torch.Tensor, max_offset: int = 16) -> dict:
    """Patterns, offset-profile summary and head scores on ``tokens`` (JSON-able + tensors)."""
    patterns = attention_patterns(model, tokens)
    scores = head_scores(patterns, tokens, model.cfg.d_vocab, model.cfg.windows())
    return {
        "patterns": patterns,
        "summary": attention_summary(patterns, max_offset),
        "head_scores": scores.to_dict(),
        "profile": offset_profile(patterns, max_offset).mean(1).cpu(),
    }


@torch.no_grad()
def explain_model(
    model: MarkovTransformer,
    chain: MarkovChain,
    config: ExplainConfig | None = None,
    train_len: int | None = None,
) -> Explanation:
    """Run every analysis of the module docstring on ``model`` with data from ``chain``."""
    config = config or ExplainConfig()
    model.eval()
    if chain.n_states != model.cfg.d_vocab:
        raise ValueError(
            f"the chain has {chain.n_states} states, the model d_vocab={model.cfg.d_vocab}"
        )
    n = resolve_seq_len(model, config.seq_len, train_len)
    dev = model.W_E.device
    gen = torch.Generator().manual_seed(config.seed)
    corruptions = config.corruptions or default_corruptions(chain)

    tokens = chain.sample(config.n_seqs, n, generator=gen)
    att = analyse_attention(model, tokens.to(dev))
    attribution = logit_attribution(model, tokens.to(dev)).summary(
        position=-1 if model.cfg.d_vocab == 2 else None
    )

    corruption_results, direct, ablations, patching = {}, {}, {}, {}
    for name in corruptions:
        data = make_patching_data(chain, name, config.n_seqs, n, gen)
        # Both batches run once with every hook cached (the explicit attention branch): the
        # sources and targets of both directions' sweeps and of the ablations' sweeps.
        runs = cache_runs(model, data)
        acts = _acts(model, PATCH_ACTS)
        patching[name] = {
            d: run_patching(model, data, acts, d, config.metric, config.budget, runs=runs)
            for d in ("denoise", "noise")
        }
        res = patching[name]["denoise"]
        _, rho = mechanistic_verdict(res.effect, res.true_effect)
        corruption_results[name] = {
            "model_clean": res.clean,
            "model_corrupt": res.corrupt,
            "model_effect": res.effect,
            "true_effect": res.true_effect,
            "ratio": rho,
            "ratio_se": res.ratio_se,
            "n_pairs": res.n_pairs,
            "n_changed": res.n_changed,
            "readout": _readout_table(patching[name], n),
        }
        # its own two runs with only the hooks it reads: the fused attention branch, as the
        # direct paths are defined (the explicit branch differs by float rounding)
        direct[name] = direct_path_effects(model, data, config.metric)
        if name == corruptions[0]:
            reference = chain.sample(config.n_seqs, n, generator=gen)
            ref_cache = cache_run(model, reference.to(dev))[1]  # for both modes
            ab_acts = _acts(model, ABLATE_ACTS)
            for mode in ("mean", "resample"):
                out = run_ablation(
                    model,
                    data,
                    reference,
                    mode,
                    ab_acts,
                    gen,
                    config.budget,
                    runs=runs,
                    reference_cache=ref_cache,
                )
                ablations[mode] = {
                    "clean_logprob": out["clean_logprob"],
                    "loss_increase_at_readout": {
                        k: _readout(v, k, n).tolist()
                        for k, v in out["loss_increase"].items()
                        if not k.endswith("_all")
                    },
                    "loss_increase_all_positions": {
                        k: v.tolist() for k, v in out["loss_increase"].items() if k.endswith("_all")
                    },
                }

    flip = corruption_results.get("flip")
    rho_se = float("nan")
    if flip is not None:
        rho_se = flip["ratio_se"]
        verdict, rho = mechanistic_verdict(flip["model_effect"], flip["true_effect"], rho_se)
    else:
        verdict, rho = "undetermined", float("nan")
    sample = Sample(config.n_seqs, n, config.seed)
    # which path carries the dependence (only meaningful when there is one)
    carrier = _carrier(direct.get("flip")) if verdict in ("bigram", "partial") else None
    summary = {
        "config": config.to_dict(),
        "seq_len": n,
        "sample": sample.to_dict(),
        "sample_text": sample.describe(),
        "chain": chain.to_dict(),
        "model": model.cfg.to_dict(),
        "verdict": verdict,
        "flip_ratio": rho,
        "flip_ratio_se": rho_se,
        "flip_ratio_interval": [rho - Z_INTERVAL * rho_se, rho + Z_INTERVAL * rho_se],
        "carrier": carrier,
        "corruptions": corruption_results,
        "direct_paths": direct,
        "ablation": ablations,
        "attention": att["summary"],
        "head_scores": att["head_scores"],
        "attribution_at_readout": attribution,
        "thresholds": {
            "bigram_ratio": BIGRAM_RATIO,
            "unigram_ratio": UNIGRAM_RATIO,
            "true_effect_min": TRUE_EFFECT_MIN,
            "z_interval": Z_INTERVAL,
        },
    }
    return Explanation(
        summary=finite_json(summary),
        patterns_example=att["patterns"][:, 0].cpu(),
        patterns_mean=att["patterns"].mean(1).cpu(),
        example_tokens=tokens[0].cpu(),
        profile=att["profile"],
        patching=patching,
    )


def _acts(model: MarkovTransformer, acts: tuple[str, ...]) -> list[str]:
    """``acts`` without mlp_out in attention-only models and without z for one head (= attn_out)."""
    skip = {"mlp_out"} if model.cfg.attn_only else set()
    if model.cfg.n_heads == 1:
        skip.add("z")
    return [a for a in acts if a not in skip]


def _readout(values: torch.Tensor, act: str, n: int) -> torch.Tensor:
    """The entries of a sweep at the readout position N-1 ([layer] or [layer, head])."""
    if act == "pattern":
        return values[..., n - 1]
    return values[:, n - 1]


def _readout_table(by_direction: dict, n: int) -> dict:
    """Normalised denoise / noise effect of patching each component at the readout x_n."""
    table = {}
    for direction, res in by_direction.items():
        for act in res.raw:
            values = _readout(res.normalised(act), act, n)
            for layer, row in enumerate(values.tolist()):
                if isinstance(row, list):
                    for head, v in enumerate(row):
                        table.setdefault(f"L{layer}H{head}.{act}", {})[direction] = v
                else:
                    table.setdefault(f"L{layer}.{act}", {})[direction] = row
    return table


def _carrier(direct: dict | None) -> str | None:
    """The group (direct / attention / mlp) with the largest share of the flip effect."""
    if direct is None or not all(math.isfinite(v) for v in direct["shares"].values()):
        return None
    return max(direct["shares"], key=lambda k: direct["shares"][k])


def finite_json(obj):
    """``obj`` with every nan / inf float replaced by None (strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_json(v) for v in obj]
    return obj


# ------------------------------------------------------------------------------- the report

REPORT = "report.md"
JSON_NAME = "explain.json"
FIGURES = {
    "attention_example": "attention_example.png",
    "attention_mean": "attention_mean.png",
    "offset_profile": "offset_profile.png",
    "direct_paths": "direct_paths.png",
}


def report_files(corruptions: list[str]) -> list[str]:
    """Names of every file ``write_report`` writes for these corruptions."""
    names = [REPORT, JSON_NAME, *FIGURES.values()]
    for c in corruptions:
        for d in ("denoise", "noise"):
            names.append(f"patch_{c}_{d}.png")
    return names


def check_outputs(out_dir: Path, names: list[str], overwrite: bool) -> None:
    """FileExistsError naming the outputs that already exist (unless overwrite)."""
    existing = [name for name in names if (Path(out_dir) / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{out_dir} already holds {', '.join(existing)}; pass --force (overwrite=True) "
            "to replace them, or choose another --out"
        )


def _save(fig, path: Path) -> None:
    try:
        savefig_atomic(fig, path, dpi=110)
    finally:
        plt.close(fig)


def _fmt(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.{digits}f}"


def _interval(estimate, se) -> str:
    """ "0.91 [0.85, 0.97]" (95%), or the estimate alone without a finite se."""
    if se is None or estimate is None or not (math.isfinite(se) and math.isfinite(estimate)):
        return _fmt(estimate, 2)
    half = Z_INTERVAL * se
    return f"{_fmt(estimate, 2)} [{_fmt(estimate - half, 2)}, {_fmt(estimate + half, 2)}]"


def write_report(
    expl: Explanation, out_dir: str | Path, title: str, overwrite: bool = False
) -> Path:
    """Write report.md, explain.json and the PNGs into ``out_dir``; returns the report path."""
    out_dir = Path(out_dir)
    corruptions = list(expl.patching)
    check_outputs(out_dir, report_files(corruptions), overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    s = expl.summary
    tokens = expl.example_tokens
    _save(
        plot_patterns(expl.patterns_example, tokens, "attention, one sequence"),
        out_dir / FIGURES["attention_example"],
    )
    _save(
        plot_patterns(
            expl.patterns_mean, None, f"attention, mean over {s['config']['n_seqs']} sequences"
        ),
        out_dir / FIGURES["attention_mean"],
    )
    uniform = s["attention"].get("uniform_profile")
    uniform = torch.tensor(uniform) if uniform is not None else None
    _save(plot_offset_profile(expl.profile, uniform=uniform), out_dir / FIGURES["offset_profile"])
    _save(
        plot_direct_paths(s["direct_paths"], "which component carries the effect to the output"),
        out_dir / FIGURES["direct_paths"],
    )
    for c, by_dir in expl.patching.items():
        for d, res in by_dir.items():
            fig = plot_patching_result(res, f"{c}, {d}: normalised {res.metric}")
            _save(fig, out_dir / f"patch_{c}_{d}.png")
    record = finite_json(
        json.loads(json.dumps(expl.to_dict() | {"title": title}, default=_default))
    )
    write_text_atomic(out_dir / JSON_NAME, json.dumps(record, indent=2, allow_nan=False))
    report = out_dir / REPORT
    write_text_atomic(report, _markdown(s, title, corruptions))
    return report


def _default(o):
    if isinstance(o, torch.Tensor):
        return o.tolist()
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def _markdown(s: dict, title: str, corruptions: list[str]) -> str:
    lines = [f"# {title}", ""]
    model = s["model"]
    lines += [
        f"Model: {model['n_layers']} layer(s), {model['n_heads']} head(s), d_model {model['d_model']}, "
        f"{'tied' if model['tie_embeddings'] else 'untied'} embeddings"
        f"{', attention only' if model['attn_only'] else ''}; chain: `{json.dumps(s['chain'])}`; "
        f"sample: {s['sample_text']}.",
        "",
        "## Verdict",
        "",
    ]
    verdict, rho = s["verdict"], s["flip_ratio"]
    flip = s["corruptions"].get("flip")
    interval = _interval(rho, s["flip_ratio_se"])
    if verdict == "undecided":
        lines.append(
            f"**undecided**: the flip ratio {interval} reaches across a threshold "
            f"({UNIGRAM_RATIO} for unigram, {BIGRAM_RATIO} for bigram) on this sample "
            f"({s['sample_text']}); use more sequences (--n-seqs)."
        )
    elif verdict == "undetermined":
        lines.append(
            "**undetermined**: the true next-token law does not depend on x_n here (or no flip "
            "corruption was run), so the flip test cannot separate a bigram from a unigram solution."
        )
    else:
        target = (
            "the in-context (Bayes) predictor"
            if s["chain"]["family"] == "in_context"
            else "the kernel"
        )
        what = {
            "bigram": f"the prediction follows the current token x_n as {target} does: a **bigram** solution",
            "unigram": "flipping x_n leaves the output (almost) unchanged: a **unigram** solution (the model only encodes the marginal)",
            "partial": "the output depends on x_n, but less than the kernel does: **partial** (between unigram and bigram)",
        }[verdict]
        lines.append(
            f"Flipping x_n changes the {METRIC_WORDS[s['config']['metric']]} by "
            f"{_fmt(flip['model_effect'])} "
            f"(a perfect predictor: {_fmt(flip['true_effect'])}; ratio {interval}): {what}."
        )
    if s["carrier"] is not None and verdict in ("bigram", "partial"):
        shares = s["direct_paths"]["flip"]["shares"]
        lines.append(
            f"The dependence on x_n reaches the output mainly through **{s['carrier']}** "
            f"(direct-path shares: embedding {_fmt(shares['direct'], 2)}, attention "
            f"{_fmt(shares['attention'], 2)}, MLP {_fmt(shares['mlp'], 2)})."
        )
    lines += ["", "## Reaction to each corruption", ""]
    lines += [
        f"Metric: {s['config']['metric']}. Effect = M_clean - M_corrupt (batch means); ratio = "
        f"model / perfect predictor, 95% interval (delta method); changed pairs: the pairs whose "
        f"input the corruption changed, the effective sample ({s['sample_text']}).",
        "",
        "| corruption | M_clean | M_corrupt | model effect | true effect | ratio | changed pairs |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in corruptions:
        r = s["corruptions"][c]
        lines.append(
            f"| {c} | {_fmt(r['model_clean'])} | {_fmt(r['model_corrupt'])} | {_fmt(r['model_effect'])} "
            f"| {_fmt(r['true_effect'])} | {_interval(r['ratio'], r['ratio_se'])} "
            f"| {r['n_changed']} of {r['n_pairs']} |"
        )
    lines += ["", "## Where the effect enters the output (direct paths)", ""]
    lines += [
        "Each component's corrupted value put into the clean final residual stream at x_n (all else clean); "
        "share = its effect / the total. Gap = sum of shares - 1 (LayerNorm and softmax non-linearity).",
        "",
        "| corruption | embedding (direct) | attention | MLP | gap |",
        "|---|---|---|---|---|",
    ]
    for c in corruptions:
        d = s["direct_paths"][c]
        sh = d["shares"]
        lines.append(
            f"| {c} | {_fmt(sh['direct'], 2)} | {_fmt(sh['attention'], 2)} | {_fmt(sh['mlp'], 2)} "
            f"| {_fmt(d['additivity_gap'], 2)} |"
        )
    lines += ["", "![direct paths](direct_paths.png)", ""]
    lines += ["## Activation patching at x_n", ""]
    lines += [
        "Normalised (M - M_corrupt) / (M_clean - M_corrupt) after patching one component at the "
        "readout position. Denoise (clean into corrupted run): 1 = sufficient. Noise (corrupted into "
        "clean run): 0 = necessary. Full (layer, position) grids: patch_*.png.",
        "",
    ]
    for c in corruptions:
        table = s["corruptions"][c]["readout"]
        lines += [f"**{c}**", "", "| component | denoise | noise |", "|---|---|---|"]
        for comp, vals in table.items():
            lines.append(
                f"| {comp} | {_fmt(vals.get('denoise'), 2)} | {_fmt(vals.get('noise'), 2)} |"
            )
        lines += ["", f"![{c} denoise](patch_{c}_denoise.png)", ""]
    if s["ablation"]:
        lines += ["## Ablation (increase of the next-token loss, nats)", ""]
        lines += [
            "| component | mean @ x_n | resample @ x_n | mean, all positions | resample, all positions |",
            "|---|---|---|---|---|",
        ]
        mean, res = s["ablation"]["mean"], s["ablation"]["resample"]
        for act, vals in mean["loss_increase_at_readout"].items():
            rvals = res["loss_increase_at_readout"][act]
            mall = mean["loss_increase_all_positions"][f"{act}_all"]
            rall = res["loss_increase_all_positions"][f"{act}_all"]
            for layer, v in enumerate(vals):
                if isinstance(v, list):
                    for head, vh in enumerate(v):
                        lines.append(
                            f"| L{layer}H{head} {act} | {_fmt(vh)} | {_fmt(rvals[layer][head])} "
                            f"| {_fmt(mall[layer][head])} | {_fmt(rall[layer][head])} |"
                        )
                else:
                    lines.append(
                        f"| L{layer} {act} | {_fmt(v)} | {_fmt(rvals[layer])} | {_fmt(mall[layer])} | {_fmt(rall[layer])} |"
                    )
        lines.append("")
    att, hs = s["attention"], s["head_scores"]
    lines += ["## Attention", ""]
    lines += [
        "| head | weight on itself | on the previous token | mean distance | prev-token score (shuffled) | induction score (shuffled) |",
        "|---|---|---|---|---|---|",
    ]
    for layer, row in enumerate(att["self_weight"]):
        for head, self_w in enumerate(row):
            lines.append(
                f"| L{layer}H{head} | {_fmt(self_w)} | {_fmt(att['previous_weight'][layer][head])} "
                f"| {_fmt(att['mean_distance'][layer][head], 2)} "
                f"| {_fmt(hs['previous_token'][layer][head])} ({_fmt(hs['previous_token_baseline'][layer][head])}) "
                f"| {_fmt(hs['induction'][layer][head])} ({_fmt(hs['induction_baseline'][layer][head])}) |"
            )
    lines += [
        "",
        "![offset profile](offset_profile.png)",
        "",
        "![attention, one sequence](attention_example.png)",
        "",
        "![attention, batch mean](attention_mean.png)",
        "",
    ]
    attr = s["attribution_at_readout"]
    lines += ["## Direct logit attribution", ""]
    where = "at the last position" if attr["position"] is not None else "mean over positions"
    lines += [
        f"Target: {attr['kind']} ({where}), mean {_fmt(attr['target_mean'])}, of which the "
        f"unembedding bias b_U gives {_fmt(attr['bias_mean'])}; the components below sum to the "
        "rest (final LayerNorm scale of the actual run applied to each).",
        "",
        "| component | mean contribution |",
        "|---|---|",
    ]
    for comp, v in attr["components"].items():
        lines.append(f"| {comp} | {_fmt(v)} |")
    lines.append("")
    return "\n".join(lines)


def default_out_dir(run_dir: str | Path, command: str, step: int | None = None) -> Path:
    """RUN_DIR/interp/COMMAND, or RUN_DIR/interp/COMMAND-step_XXXXXX for an explicit step."""
    suffix = "" if step is None else f"-{step_dir_name(step)}"
    return Path(run_dir) / "interp" / f"{command}{suffix}"


def explain_run(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    step: int | None = None,
    config: ExplainConfig | None = None,
    overwrite: bool = False,
    device: str | torch.device | None = None,
) -> tuple[Path, Explanation]:
    """``explain_model`` on a run directory's checkpoint (default: the last) and
    ``write_report`` into ``out_dir`` (default ``default_out_dir(run_dir, "explain", step)``).
    Existing outputs are refused (FileExistsError) before any work unless ``overwrite``.
    Returns (report path, explanation)."""
    run = load_run(run_dir)
    steps = run.checkpoint_steps()
    if not steps:
        raise FileNotFoundError(f"run {run.path} has no checkpoints")
    chosen = steps[-1] if step is None else step
    model = run.model(chosen, device=device)
    out = Path(out_dir) if out_dir is not None else default_out_dir(run.path, "explain", step)
    config = config or ExplainConfig()
    check_outputs(
        out, report_files(config.corruptions or default_corruptions(run.chain)), overwrite
    )
    expl = explain_model(model, run.chain, config, train_len=run.train_config.seq_len)
    title = f"markov-lens explain: {display_name(run.path.name)} (step {chosen})"
    return write_report(expl, out, title, overwrite=overwrite), expl
