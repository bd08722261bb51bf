"""``markov-lens chain``: a Markov source's exact reference losses (and a picture of it).

markov-lens chain --p 0.5 --q 0.8 --json          # binary chain
markov-lens chain --lag 2 --p 0.2 --q 0.3           # the paper's second-order chain
markov-lens chain --order 2 --kernel K.json         # explicit kernel [S]*2 + [S]
markov-lens chain --random-kernel --states 3 --order 2 --seed 1
markov-lens chain --states 5 --stay 0.9             # symmetric chain
markov-lens chain --in-context --states 3           # Monte Carlo in-context losses
markov-lens chain --p 0.5 --q 0.8 --plot chain.png  # samples + empirical vs true kernel
"""

from __future__ import annotations

import argparse
import json
import os

import torch

from markov_lens.cli import add_command
from markov_lens.cli.validation import add_allow_large, check_output_path
from training import limits
from training.chains import (
    BinaryChain,
    InContextChain,
    KthOrderChain,
    MarkovChain,
    transition_counts,
)
from training.limits import read_input_file
from training.references import in_context_losses, reference_losses
from training.runs import savefig_atomic

# which options each way of naming a chain accepts (argparse dests; others must be unset)
COMMON = {"init", "json", "plot", "force", "length", "seed", "allow_large"}
MODES = {
    "in-context": {"states", "order", "alpha", "doubly_stochastic", "n_sequences", "beta"},
    "lag": {"p", "q"},
    "kernel": {"order"},
    "random-kernel": {"states", "order", "alpha"},
    "stay": {"states", "order"},
    "binary": {"p", "q", "order"},
}
PREDICTORS = ("uniform", "unigram", "bigram", "bayes", "oracle")


def register(subparsers) -> None:
    p = add_command(
        subparsers,
        "chain",
        description="Print a Markov chain's stationary law, entropy rate (the bigram loss), "
        "unigram loss and order-j losses in nats; Monte Carlo losses for in-context chains.",
        epilog="Name exactly one chain: --p/--q, --lag, --kernel, --random-kernel, --stay "
        "or --in-context.",
    )
    g = p.add_argument_group("chain")
    g.add_argument("--p", type=float, help="P(1|0) of a binary (or lag-k) chain")
    g.add_argument("--q", type=float, help="P(0|1) of a binary (or lag-k) chain")
    g.add_argument("--lag", type=int, metavar="K", help="lag-K binary chain with --p, --q")
    g.add_argument("--order", type=int, metavar="K", help="order of the chain (default 1)")
    g.add_argument("--kernel", metavar="FILE", help="JSON nested list of shape [S]*K + [S]")
    g.add_argument("--random-kernel", action="store_true", help="Dirichlet(alpha) kernel rows")
    g.add_argument("--states", type=int, metavar="S", help="number of states")
    g.add_argument("--stay", type=float, metavar="X", help="symmetric chain: stay prob X")
    g.add_argument("--alpha", type=float, help="Dirichlet concentration (default 1)")
    g.add_argument("--init", choices=("stationary", "uniform"), help="law of the first K tokens")
    g.add_argument("--seed", type=int, help="seed of the random kernel / samples (default 0)")
    ic = p.add_argument_group("in-context chains (Monte Carlo)")
    ic.add_argument("--in-context", action="store_true", help="a fresh kernel per sequence")
    ic.add_argument("--doubly-stochastic", action="store_true", help="uniform stationary prior")
    ic.add_argument("--length", type=int, help="tokens per sequence (101; --plot: 64)")
    ic.add_argument("--n-sequences", type=int, help="Monte Carlo sequences (default 20000)")
    ic.add_argument("--beta", type=float, help="pseudocount of the add-beta estimators (1)")
    out = p.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print one JSON object")
    out.add_argument("--plot", metavar="FILE.png", help="samples and empirical vs true kernel")
    out.add_argument("--force", action="store_true", help="replace an existing --plot FILE")
    add_allow_large(p)
    p.set_defaults(func=run)


def _mode(args: argparse.Namespace) -> str:
    named = [
        name
        for name, given in (
            ("in-context", args.in_context),
            ("lag", args.lag is not None),
            ("kernel", args.kernel is not None),
            ("random-kernel", args.random_kernel),
            ("stay", args.stay is not None),
        )
        if given
    ]
    if len(named) > 1:
        raise ValueError(f"name one chain, got --{' and --'.join(named)}")
    if named:
        return named[0]
    if args.p is not None or args.q is not None:
        return "binary"
    raise ValueError(
        "name a chain: --p/--q, --lag K, --kernel FILE, --random-kernel, --stay X or --in-context"
    )


def _require(args: argparse.Namespace, mode: str, *names: str) -> None:
    missing = [f"--{n.replace('_', '-')}" for n in names if getattr(args, n) is None]
    if missing:
        raise ValueError(f"--{mode} needs {' and '.join(missing)}")


def _load_kernel(path: str) -> list:
    text = read_input_file(path, "--kernel")  # a regular file of bounded size
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"--kernel {path}: not valid JSON ({err})") from None
    except RecursionError:
        raise ValueError(f"--kernel {path}: JSON nested too deeply for a kernel") from None


def chain_from_args(args: argparse.Namespace) -> MarkovChain:
    """The chain named on the command line; ValueError for missing or conflicting options."""
    mode = _mode(args)
    given = {
        dest
        for dest, value in vars(args).items()
        if dest not in ("command", "func") and value is not None and value is not False
    }
    flag = {"in-context": "in_context", "random-kernel": "random_kernel"}
    extra = sorted(given - COMMON - MODES[mode] - {flag.get(mode, mode)})
    if extra:
        options = ", ".join(f"--{e.replace('_', '-')}" for e in extra)
        what = "a binary chain (--p/--q)" if mode == "binary" else f"--{mode}"
        raise ValueError(f"{options} cannot be combined with {what}")
    init = {"init": args.init} if args.init else {}
    order = 1 if args.order is None else args.order
    alpha = 1.0 if args.alpha is None else args.alpha
    if mode == "in-context":
        states = 2 if args.states is None else args.states
        return InContextChain(states, order, alpha, args.doubly_stochastic, **init)
    if mode == "lag":
        _require(args, mode, "p", "q")
        return KthOrderChain.lag(args.lag, args.p, args.q, **init)
    if mode == "kernel":
        chain = KthOrderChain(_load_kernel(args.kernel), **init)
        if args.order is not None and args.order != chain.order:
            raise ValueError(f"--order {args.order} but the kernel has order {chain.order}")
        return chain
    if mode == "random-kernel":
        _require(args, mode, "states")
        seed = 0 if args.seed is None else args.seed
        return KthOrderChain.random(args.states, order, alpha, seed, **init)
    if mode == "stay":
        _require(args, mode, "states")
        if not 0.0 <= args.stay <= 1.0:
            raise ValueError(f"--stay must be a probability in [0, 1], got {args.stay}")
        return KthOrderChain.symmetric(args.states, 1.0 - args.stay, order, **init)
    if args.p is None or args.q is None:
        raise ValueError("a binary chain needs both --p and --q")
    if order != 1:
        raise ValueError(f"--p/--q name a first-order chain; use --lag {order} for order {order}")
    return BinaryChain(args.p, args.q, **init)


def run(args: argparse.Namespace) -> int:
    if args.plot is not None:
        check_output_path(args.plot, "--plot", file=True)
    if args.plot and os.path.exists(args.plot) and not args.force:
        raise FileExistsError(f"{args.plot} exists; pass --force to replace it")
    chain = chain_from_args(args)
    seed = 0 if args.seed is None else args.seed
    if args.plot:  # 512 sampled sequences of --length tokens, and their counts
        limits.check_tokens(("plot sequences", "--length"), 512, args.length or 64)
    if isinstance(chain, InContextChain):
        n_sequences = 20_000 if args.n_sequences is None else args.n_sequences
        beta = 1.0 if args.beta is None else args.beta
        length = 101 if args.length is None else args.length
        limits.check_tokens(("--n-sequences", "--length"), n_sequences, length)
        chunk = min(n_sequences, 4096) * length * chain.n_states ** (chain.order + 1)
        limits.check_fits(  # one chunk's tokens, counts and five predictors' probabilities
            limits.Estimate({"data": 16.0 * 8 * chunk, "results": 80.0 * n_sequences}),
            f"--n-sequences {n_sequences} x --length {length}",
        )
        result = {"description": repr(chain)}
        result |= in_context_losses(chain, length, n_sequences, seed, beta)
        if chain.doubly_stochastic:
            result["stationary"] = [1.0 / chain.n_states] * chain.n_states
    else:
        result = {"chain": chain.to_dict(), "description": repr(chain)}
        result |= reference_losses(chain)
    if args.plot:
        plot_chain(chain, args.plot, 64 if args.length is None else args.length, seed)
        result["plot"] = str(args.plot)
    print(json.dumps(result) if args.json else format_table(result))
    return 0


def format_table(result: dict) -> str:
    """Human-readable summary of ``run``'s result."""
    lines = [f"chain         {result['description']}"]
    if "stationary" in result:
        lines.append("stationary    " + "  ".join(f"{x:.4f}" for x in result["stationary"]))
    if "entropy_rate" in result:
        lines.append("loss (nats)")
        lines.append(f"  unigram H(pi)            {result['unigram_loss']:.4f}")
        for j, loss in enumerate(result["order_losses"][1:-1], start=1):
            lines.append(f"  last {j} token(s) only     {loss:.4f}")
        lines.append(f"  entropy rate (kernel)    {result['entropy_rate']:.4f}")
        if "pi_1" in result:
            lines.append(
                f"pi_1          {result['pi_1']:.4f}   (p + q = {result['p'] + result['q']:g})"
            )
    else:
        lines.append(
            f"Monte Carlo   {result['n_sequences']} sequences, {result['length']} tokens, "
            f"seed {result['seed']}: {result['positions']}"
        )
        lines.append("predictor     loss (nats)   se")
        for name in PREDICTORS:
            lines.append(
                f"  {name:<10}  {result[name]['mean']:.4f}        {result[name]['se']:.4f}"
            )
    if "plot" in result:
        lines.append(f"plot          {result['plot']}")
    return "\n".join(lines)


def plot_chain(chain: MarkovChain, path: str, length: int = 64, seed: int = 0) -> None:
    """Save a figure: sampled sequences as an image strip, empirical vs true kernel rows.

    Fixed chains: transition frequencies over 512 sampled sequences. In-context chains:
    the frequencies seen in sequence 0 against its own kernel. Kernel panels are drawn when
    there are at most 64 contexts (S^k).
    """
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    if length < 2:
        raise ValueError(f"--length must be >= 2 to plot, got {length}")
    S, k = chain.n_states, chain.order
    gen = torch.Generator().manual_seed(seed)
    tokens, kernels = chain.sample(512, length, generator=gen, return_kernels=True)
    counted = tokens[:1] if chain.family == "in_context" else tokens
    counts = transition_counts(counted, S, k).reshape(-1, S)
    empirical = counts / counts.sum(-1, keepdim=True).clamp_min(1)
    panels = (
        []
        if S**k > 64
        else [
            (empirical, f"empirical ({'sequence 0' if len(counted) == 1 else '512 sequences'})"),
            (kernels[0].reshape(-1, S), "true kernel"),
        ]
    )
    fig = Figure(figsize=(7 + 2 * len(panels), 3.6), layout="constrained")
    axes = fig.subplots(1, 1 + len(panels), width_ratios=[3] + [1] * len(panels), squeeze=False)[0]
    fig.suptitle(repr(chain), fontsize=10)
    strip = axes[0].imshow(tokens[:8].numpy(), aspect="auto", cmap="viridis", vmin=0, vmax=S - 1)
    axes[0].set(xlabel="position", ylabel="sequence", title="8 sampled sequences")
    fig.colorbar(strip, ax=axes[0], ticks=range(S), label="token")
    contexts = ["".join(str(z // S ** (k - 1 - i) % S) for i in range(k)) for z in range(S**k)]
    for ax, (table, title) in zip(axes[1:], panels, strict=True):
        ax.imshow(table.numpy(), cmap="Blues", vmin=0, vmax=1, aspect="auto")
        ax.set(title=title, xlabel="next token", ylabel=f"last {k} token(s)", xticks=range(S))
        ax.set_yticks(range(S**k) if S**k <= 16 else [], contexts if S**k <= 16 else [])
        if S ** (k + 1) <= 64:
            for i, row in enumerate(table.tolist()):
                for j, value in enumerate(row):
                    ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8)
    savefig_atomic(fig, path, dpi=100)
