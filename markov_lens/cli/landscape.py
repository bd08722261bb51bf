"""``markov-lens landscape``: Hessian verdicts, loss paths and surfaces, the reduced model.

markov-lens landscape RUN_DIR [--out DIR]               # a trained run: Hessian at the final
                                                        # checkpoint, line theta_pi -> final,
                                                        # 2-D slice with the trajectory
markov-lens landscape --theta-pi --p 0.5 --q 0.8 [--no-tie] [--layers 2] --out DIR
markov-lens landscape --grid --p 0.2,0.5,0.8 --q 0.2,0.5,0.8 --out DIR
markov-lens landscape --reduced --p 0.5 --q 0.8 --out DIR

Every mode writes JSON and PNG figures into --out (a run's default: RUN_DIR/landscape) and
refuses a non-empty --out without --force.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import torch

from interp.hessian import ParamLayout
from interp.landscape import (
    METHODS,
    LandscapeConfig,
    analysis_copy,
    default_device,
    grid_table_markdown,
    hessian_report,
    plot_grid,
    plot_spectrum,
    population_loss,
    sample_tokens,
    theta_pi_analysis,
    theta_pi_grid,
    theta_pi_model,
)
from interp.measurement import MeasurementSpec
from interp.paths import (
    filter_normalized_direction,
    line_path,
    loss_surface,
    pca_directions,
    plot_line,
    plot_surface,
    project_onto_plane,
    run_trajectory,
)
from interp.reduced_model import ReducedModel, plot_reduced_landscape
from markov_lens.cli import add_command
from markov_lens.cli.validation import add_allow_large, check_device
from training import limits
from training.chains import BinaryChain, InContextChain, MarkovChain
from training.config import ModelConfig
from training.inits import init_theta_pi
from training.references import stationary_marginal
from training.runs import load_run, savefig_atomic, write_text_atomic

PLANES = ("anchors", "pca", "random")


def register(subparsers) -> None:
    p = add_command(
        subparsers,
        "landscape",
        description="Test the paper's landscape claims numerically: the Hessian at a point with "
        "a sampling-error-aware verdict (saddle / local minimum / flat), the loss on lines "
        "and planes with training trajectories, and the two-parameter reduced model.",
        epilog="Modes: RUN_DIR (a run of `markov-lens train`), --theta-pi, --grid, --reduced.",
    )
    p.add_argument("run_dir", nargs="?", metavar="RUN_DIR", help="a run directory")
    modes = p.add_argument_group("modes (instead of RUN_DIR)")
    modes.add_argument("--theta-pi", action="store_true", help="analyse theta_pi of a chain")
    modes.add_argument("--grid", action="store_true", help="theta_pi over a (p, q) grid")
    modes.add_argument("--reduced", action="store_true", help="the Local-to-Global model")
    chain = p.add_argument_group("chain and architecture (--theta-pi, --grid, --reduced)")
    chain.add_argument("--p", help="P(1|0); --grid: comma-separated values")
    chain.add_argument("--q", help="P(0|1); --grid: comma-separated values")
    chain.add_argument(
        "--tie",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="tied embeddings (default: tied)",
    )
    chain.add_argument("--layers", type=int, default=1, help="n_layers (default 1)")
    chain.add_argument("--d-model", type=int, default=8, help="d_model (default 8)")
    chain.add_argument(
        "--n-ctx",
        type=int,
        default=16,
        help="positions (= sequence length) at theta_pi (default 16)",
    )
    chain.add_argument(
        "--archs",
        default="tied-1,untied-1,tied-2,untied-2",
        help="--grid: architectures as tied-L / untied-L, comma-separated",
    )
    chain.add_argument(
        "--model-seed",
        type=int,
        default=0,
        help="seed of the arbitrary parameters W_Q, W_K, W_V, W_pos",
    )
    est = p.add_argument_group("estimation")
    est.add_argument(
        "--n-sequences", type=int, help="sample size (default 2048; RUN_DIR: 32768 tokens' worth)"
    )
    est.add_argument("--seq-len", type=int, help="sequence length (default: n_ctx / the run's)")
    est.add_argument("--seed", type=int, default=0, help="sample seed (default 0)")
    est.add_argument("--method", choices=METHODS, default="auto", help="Hessian method")
    est.add_argument("--lanczos-iters", type=int, help="Lanczos steps (default 80)")
    est.add_argument("--include", help="comma-separated parameter names/patterns (default all)")
    geo = p.add_argument_group("paths and surfaces (RUN_DIR, --theta-pi)")
    geo.add_argument("--step", type=int, help="RUN_DIR: checkpoint step (default: the last)")
    geo.add_argument(
        "--plane",
        choices=PLANES,
        default="anchors",
        help="RUN_DIR slice: anchors (towards theta_pi and the first checkpoint), "
        "pca (of the trajectory), random (filter-normalised)",
    )
    geo.add_argument("--points", type=int, default=21, help="points per line / grid side (21)")
    geo.add_argument(
        "--span",
        type=float,
        default=0.25,
        help="margin beyond the anchors (fraction), or half-width (random/eigen)",
    )
    out = p.add_argument_group("output")
    out.add_argument("--out", metavar="DIR", help="output directory")
    out.add_argument("--force", action="store_true", help="write into a non-empty --out")
    out.add_argument("--device", help="cpu / cuda (default: CUDA when available)")
    add_allow_large(p)
    p.set_defaults(func=run)


# ----------------------------------------------------------------------------------- helpers


def _floats(text: str | None, name: str) -> list[float]:
    if text is None:
        raise ValueError(f"--{name} is required in this mode")
    try:
        values = [float(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise ValueError(
            f"--{name} must be a number or comma-separated numbers, got {text!r}"
        ) from None
    if not values:
        raise ValueError(f"--{name} is empty")
    for v in values:
        if not 0 < v < 1:
            raise ValueError(f"--{name} values must be probabilities in (0, 1), got {v}")
    return values


def _one(text: str | None, name: str) -> float:
    values = _floats(text, name)
    if len(values) != 1:
        raise ValueError(f"--{name} takes one value in this mode, got {text!r}")
    return values[0]


def _prepare_out(out: str | None, force: bool) -> Path:
    if out is None:
        raise ValueError("--out DIR is required in this mode")
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"--out {path} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise FileExistsError(f"--out {path} is not empty; pass --force to write into it")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _write_json(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON-serialisable: {type(x).__name__}")


def _save(ax, path: Path) -> str:
    savefig_atomic(ax.figure, path, dpi=120)
    return str(path)


def _config(args, n_sequences: int, seq_len: int | None) -> LandscapeConfig:
    include = [s for s in args.include.split(",") if s] if args.include else None
    return LandscapeConfig(
        n_sequences=n_sequences,
        seq_len=seq_len,
        seed=args.seed,
        method=args.method,
        include=include,
        **({} if args.lanczos_iters is None else {"lanczos_iters": args.lanczos_iters}),
    )


def _arch(label: str, d_model: int, n_ctx: int) -> ModelConfig:
    try:
        kind, layers = label.strip().split("-")
        n_layers = int(layers)
    except ValueError:
        raise ValueError(
            f"--archs entries must look like tied-1 or untied-2, got {label!r}"
        ) from None
    if kind not in ("tied", "untied") or n_layers < 1:
        raise ValueError(f"--archs entries must look like tied-1 or untied-2, got {label!r}")
    return ModelConfig.paper(
        d_model=d_model, n_ctx=n_ctx, n_layers=n_layers, tie_embeddings=kind == "tied"
    )


def chain_marginal(chain: MarkovChain) -> torch.Tensor:
    """pi of theta_pi: the stationary marginal (in-context chains: uniform, as the trainer)."""
    if isinstance(chain, InContextChain):
        return torch.full((chain.n_states,), 1.0 / chain.n_states, dtype=torch.float64)
    return stationary_marginal(chain)


def _check_sizes(args, mode: str) -> None:
    """The device, points, Lanczos steps and sample of ``mode`` within the caps and the memory
    available (training.limits; the Hessian: float64, double backward, 512 sequences at
    once), checked before anything is built."""
    check_device(args.device)
    limits.check_cap("--points", args.points, limits.MAX_POINTS)
    limits.check_cap("--lanczos-iters", args.lanczos_iters, 10_000)
    if mode == "reduced":
        return
    if mode == "run":
        run_obj = load_run(args.run_dir)
        cfg = run_obj.model_config
        sample = MeasurementSpec(seed=args.seed).hessian_sample(
            args.seq_len or run_obj.train_config.seq_len, cfg.n_ctx, args.n_sequences
        )
        seq_len, n_seq = sample.seq_len, sample.n_seqs
    else:
        cfg = ModelConfig.paper(d_model=args.d_model, n_ctx=args.n_ctx, n_layers=args.layers)
        seq_len, n_seq = args.seq_len or args.n_ctx, args.n_sequences or 2048
    limits.check_tokens(("--n-sequences", "--seq-len"), n_seq, seq_len)
    est = limits.analysis_estimate(
        cfg, n_seq, seq_len, copies=2, backward=True, bytes_per_float=8, batch=512
    )
    limits.check_fits(est, f"--n-sequences {n_seq} x --seq-len {seq_len}", args.device)


def _check_mode(args) -> str:
    named = [m for m in ("theta_pi", "grid", "reduced") if getattr(args, m)]
    if args.run_dir is not None:
        named.insert(0, "run")
    if len(named) != 1:
        raise ValueError(
            "give exactly one of RUN_DIR, --theta-pi, --grid, --reduced"
            + (f" (got {', '.join(named)})" if named else "")
        )
    return named[0]


# -------------------------------------------------------------------------------------- run


def run(args: argparse.Namespace) -> int:
    mode = _check_mode(args)
    for name, minimum in (
        ("layers", 1),
        ("d_model", 1),
        ("n_ctx", 2),
        ("points", 2),
        ("lanczos_iters", 1),
    ):
        value = getattr(args, name)
        if value is not None and value < minimum:
            raise ValueError(f"--{name.replace('_', '-')} must be >= {minimum}, got {value}")
    if not 0 <= args.span < math.inf:  # nan fails too
        raise ValueError(f"--span must be a finite number >= 0, got {args.span}")
    for name in ("n_sequences", "seq_len"):  # None: the default; 0 is not "default"
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if mode == "run" and (args.p is not None or args.q is not None):
        raise ValueError("RUN_DIR takes its chain from the run: drop --p/--q")
    if mode != "run" and args.step is not None:
        raise ValueError("--step selects a checkpoint of RUN_DIR; it needs RUN_DIR")
    _check_sizes(args, mode)
    if mode == "run":
        return run_dir_mode(args)
    if mode == "theta_pi":
        return theta_pi_mode(args)
    if mode == "grid":
        return grid_mode(args)
    return reduced_mode(args)


def run_dir_mode(args) -> int:
    run_obj = load_run(args.run_dir)
    out = _prepare_out(args.out or str(Path(args.run_dir) / "landscape"), args.force)
    device = torch.device(args.device) if args.device else default_device()
    model = run_obj.model(args.step, device=device)
    chain = run_obj.chain
    # the Hessian sample `report` uses too (interp.measurement)
    sample = MeasurementSpec(seed=args.seed).hessian_sample(
        args.seq_len or run_obj.train_config.seq_len, model.cfg.n_ctx, args.n_sequences
    )
    seq_len, n_seq = sample.seq_len, sample.n_seqs
    cfg = _config(args, n_seq, seq_len)
    tokens = sample_tokens(chain, n_seq, seq_len, args.seed, device)
    from training.progress import Counter, Stages

    with Stages("markov-lens landscape", 4) as stage:
        stage(f"Hessian at the final checkpoint ({sample.describe()})")
        work = analysis_copy(model)
        products = Counter("markov-lens landscape: hessian", "Hessian-vector products")
        report = hessian_report(work, tokens, cfg, products)
        pi = chain_marginal(chain)
        theta_pi = init_theta_pi(analysis_copy(model), pi.to(device))
        layout = ParamLayout.from_model(work)
        final = layout.flatten(work).cpu()
        t_pi = layout.flatten(theta_pi).cpu()
        refs = _references(chain)
        stage("line theta_pi -> final")
        line = line_path(
            work, layout, t_pi, final, tokens, args.points, args.span, ("theta_pi", "final")
        )
        stage("training trajectory")
        steps, traj, _ = run_trajectory(run_obj, layout, device)
        step = steps[-1] if args.step is None else args.step
        keep = [
            i for i, s in enumerate(steps) if s <= step
        ]  # the trajectory up to the analysed step
        steps, traj = [steps[i] for i in keep], traj[keep]
        stage("2-D loss surface")
        surface, proj, points = _plane(args, work, layout, final, t_pi, traj, tokens)
    result = {
        "run_dir": str(run_obj.path),
        "step": step,
        "chain": chain.to_dict(),
        "landscape": cfg.to_dict(),
        "references": refs,
        "loss": population_loss(work, tokens, cfg.batch_size).to_dict(),
        "hessian": report.to_dict(),
        "line_theta_pi_to_final": line.to_dict(),
        "line_barrier": line.barrier(),
        "surface": surface.to_dict(),
        "trajectory": {
            "steps": steps,
            "coords": proj.coords.tolist(),
            "off_plane": proj.off_plane.tolist(),
        },
        "figures": {},
    }
    figs = result["figures"]
    figs["spectrum"] = _save(plot_spectrum(report), out / "hessian_spectrum.png")
    figs["line"] = _save(plot_line(line, references=refs), out / "line_theta_pi_to_final.png")
    ax = plot_surface(
        surface,
        trajectory=proj,
        trajectory_labels=[str(s) for s in steps],
        points=points,
        references=refs,
        title=f"{args.plane} plane through the final checkpoint; trajectory = checkpoints",
    )
    figs["surface"] = _save(ax, out / "surface.png")
    _write_json(out / "landscape.json", result)
    _print_summary(result["hessian"], out, sample=sample.describe())
    return 0


def _references(chain: MarkovChain) -> dict[str, float]:
    from training.references import entropy_rate, unigram_loss

    if isinstance(chain, InContextChain):
        return {}
    return {"unigram": unigram_loss(chain), "entropy rate": entropy_rate(chain)}


def _plane(args, model, layout, final, t_pi, traj, tokens):
    """(Surface, Projection of the trajectory, named points) for the chosen plane."""
    n = args.points
    if args.plane == "anchors":
        d1 = t_pi - final
        d2 = traj[0] - final
        cos = float(d1 @ d2 / (d1.norm() * d2.norm()).clamp_min(1e-300))
        if d2.norm() == 0 or abs(cos) > 1 - 1e-9:
            raise ValueError(
                "the first checkpoint is parallel to theta_pi - final (or equal to the final "
                "one): use --plane pca or --plane random"
            )
        lo, hi = -args.span, 1 + args.span
        alphas = torch.linspace(lo, hi, n)
        surface = loss_surface(model, layout, final, d1, d2, tokens, alphas, alphas, "anchors")
        points = {"final": (0.0, 0.0), "theta_pi": (1.0, 0.0), "first ckpt": (0.0, 1.0)}
        proj = project_onto_plane(traj, final, d1, d2)
        return surface, proj, points
    if args.plane == "pca":
        d1, d2, _ = pca_directions(traj, final)
        proj = project_onto_plane(traj, final, d1, d2)
        c = proj.coords
        pad = args.span * float((c.max(0).values - c.min(0).values).max().clamp_min(1e-6))
        alphas = torch.linspace(float(c[:, 0].min()) - pad, float(c[:, 0].max()) + pad, n)
        betas = torch.linspace(float(c[:, 1].min()) - pad, float(c[:, 1].max()) + pad, n)
        surface = loss_surface(model, layout, final, d1, d2, tokens, alphas, betas, "pca")
        return surface, proj, {"final": (0.0, 0.0)}
    gen = torch.Generator().manual_seed(args.seed)
    d1 = filter_normalized_direction(layout, final, gen)
    d2 = filter_normalized_direction(layout, final, gen)
    half = max(args.span, 1e-3) * 4  # span 0.25 -> [-1, 1], Li et al.'s usual range
    alphas = torch.linspace(-half, half, n)
    surface = loss_surface(model, layout, final, d1, d2, tokens, alphas, alphas, "random")
    return surface, project_onto_plane(traj, final, d1, d2), {"final": (0.0, 0.0)}


def theta_pi_mode(args) -> int:
    out = _prepare_out(args.out, args.force)
    p, q = _one(args.p, "p"), _one(args.q, "q")
    mcfg = ModelConfig.paper(
        d_model=args.d_model, n_ctx=args.n_ctx, n_layers=args.layers, tie_embeddings=args.tie
    )
    cfg = _config(args, args.n_sequences or 2048, args.seq_len)
    device = torch.device(args.device) if args.device else default_device()
    chain = BinaryChain(p, q)
    from training.progress import Counter

    products = Counter("markov-lens landscape: hessian", "Hessian-vector products")
    result, report = theta_pi_analysis(
        chain, mcfg, cfg, args.model_seed, device, with_report=True, progress=products
    )
    # The loss along the Hessian's extreme eigenvectors (a saddle bends down along v_min).
    model = analysis_copy(theta_pi_model(mcfg, chain, args.model_seed, torch.float64).to(device))
    tokens = sample_tokens(chain, cfg.n_sequences, cfg.seq_len or mcfg.n_ctx, cfg.seed, device)
    layout = ParamLayout.from_model(model, cfg.include)
    center = layout.flatten(model).cpu()
    half = max(args.span, 1e-3) * 2
    grid = torch.linspace(-half, half, args.points)
    surface = loss_surface(
        model, layout, center, report.v_min, report.v_max, tokens, grid, grid, "eigen"
    )
    refs = _references(chain)
    result["surface_eigen"] = surface.to_dict()
    result["figures"] = {
        "spectrum": _save(plot_spectrum(report), out / "hessian_spectrum.png"),
        "surface": _save(
            plot_surface(
                surface,
                points={"theta_pi": (0.0, 0.0)},
                references=refs,
                title=f"theta_pi, p={p:g}, q={q:g}: along v_min (x) and v_max (y)",
            ),
            out / "surface_eigen.png",
        ),
    }
    _write_json(out / "theta_pi.json", result)
    print(
        f"theta_pi p={p:g} q={q:g} {'tied' if args.tie else 'untied'} L={args.layers}: loss "
        f"{result['loss']['mean']:.4f} +- {result['loss']['se']:.4f} (unigram "
        f"{result['unigram_loss']:.4f}); |grad| {result['gradient']['norm']:.3g} (noise "
        f"{result['gradient']['noise_norm']:.3g})"
    )
    _print_summary(result["hessian"], out, result.get("prediction"), result.get("agreement"))
    return 0


def grid_mode(args) -> int:
    out = _prepare_out(args.out, args.force)
    ps, qs = _floats(args.p, "p"), _floats(args.q, "q")
    archs = {a.strip(): _arch(a, args.d_model, args.n_ctx) for a in args.archs.split(",") if a}
    cfg = _config(args, args.n_sequences or 2048, args.seq_len)
    device = torch.device(args.device) if args.device else default_device()
    rows = theta_pi_grid(ps, qs, archs, cfg, args.model_seed, device, progress=True)
    _write_json(out / "grid.json", {"landscape": cfg.to_dict(), "rows": rows})
    table = grid_table_markdown(rows)
    write_text_atomic(out / "grid.md", table)
    plot_grid(rows, out / "grid.png")
    print(table)
    return 0


def reduced_mode(args) -> int:
    out = _prepare_out(args.out, args.force)
    p, q = _one(args.p, "p"), _one(args.q, "q")
    model = ReducedModel(p, q)
    # Initial points: small e across w on both sides of the saddle, and a few larger ones.
    w0 = torch.tensor([-1.5, -1.2, -1.0, -0.8, -0.6, -0.4, -0.2, 0.2, 0.5, 1.0, 1.5]).double()
    e0 = torch.tensor([0.05, 0.3, 1.0]).double()
    E0, W0 = torch.meshgrid(e0, w0, indexing="ij")
    flows = model.flow(E0.reshape(-1), W0.reshape(-1), t_max=400.0, n_out=401)
    final = flows.final
    labels = model.classify(final[:, 0], final[:, 1])
    lo, hi = model.unigram_minima()
    result = {
        "p": p,
        "q": q,
        "s_star": model.s_star,
        "saddle": model.saddle(),
        "unigram_minima_w": [lo, hi],
        "unigram_loss": model.unigram_loss(),
        "entropy_rate": model.entropy_rate(),
        "flows": [
            {
                "e0": float(E0.reshape(-1)[i]),
                "w0": float(W0.reshape(-1)[i]),
                "e_final": float(final[i, 0]),
                "w_final": float(final[i, 1]),
                "end": labels[i],
                "energy_drift": float(flows.energy_drift()[i]),
            }
            for i in range(final.shape[0])
        ],
        "t_max": 400.0,
        "solver_steps": flows.n_steps,
    }
    ax = plot_reduced_landscape(model, flows)
    result["figures"] = {"landscape": _save(ax, out / "reduced_landscape.png")}
    _write_json(out / "reduced.json", result)
    counts = {k: labels.count(k) for k in dict.fromkeys(labels)}
    print(
        f"reduced model p={p:g} q={q:g}: s* = {model.s_star:.4f}; {len(labels)} flows end "
        f"{counts}; max energy drift {float(flows.energy_drift().max()):.2g}; wrote {out}"
    )
    return 0


def _print_summary(h: dict, out: Path, prediction=None, agree=None, sample=None) -> None:
    where = sample or f"{h['n_sequences']} sequences"
    print(
        f"Hessian ({h['method']}, {h['n_params']} params, {where}): "
        f"lambda_min {h['lambda_min']:.4g} +- {h['lambda_min_se']:.2g}, lambda_max "
        f"{h['lambda_max']:.4g}; flat band +-{h['flat_band']:.2g} (Weyl bound +-{h['flat_tol']:.2g})"
    )
    print(f"verdict: {h['verdict']} -- {h['reason']}")
    if prediction is not None or agree is not None:
        print(f"paper's prediction: {prediction or '-'} ({agree})")
    print(f"wrote {out}")
