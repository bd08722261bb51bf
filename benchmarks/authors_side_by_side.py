"""markov-lens against the authors' code, side by side (issue #26): the same model, the same
training, the same numbers.

Given a checkout of the authors' repository (github.com/Bond1995/Markov, fetched by the user;
its code is run from there, never copied here), this script builds the authors' GPT
(Markov-LLM/src/models/base.py) with markov-lens's initial weights for a seed copied into it,
and trains it with the authors' own ``main.main`` (their argument parser, AdamW groups,
OneCycleLR and ``optim/base.train_base`` loop, on the CPU: float32, no autocast) next to
markov-lens's trainer (``training.trainer.train``, targets "authors": seq_len + 1 tokens
sampled, seq_len predicted, as the authors count them) on the same batches. It prints the
largest |loss difference| over the steps (nats), the step each curve first falls halfway from
the unigram loss to the entropy rate, and both models' final p_hat / q_hat on the same held-out
batch.

What the authors' run is given instead of its own (everything else is their code as written):

- the initial weights: markov-lens's init for the seed (their init is unseeded: main.py
  comments out torch.manual_seed), copied in through ``get_model``;
- the training batches: markov-lens's ``member_batches`` for (seed, step) (their
  ``get_batch`` draws from torch's global generator and an unseeded first-token generator);
- ``eval_pred_baseline``, a model-free baseline the loop logs to wandb only: skipped (it
  samples one sequence of iterations x seq_len tokens with a Python loop per position);
- missing ``tiktoken`` / ``wandb``: empty stand-ins (used only for text generation and wandb
  logging, both off here).

    python benchmarks/authors_side_by_side.py /path/to/Markov            # 400 x 16 x 1024
    python benchmarks/authors_side_by_side.py /path/to/Markov --batch 8 --seq-len 256 \\
        --write-fixture tests/benchmarks/fixtures/authors_losses.json

``--write-fixture PATH`` also writes what tests/benchmarks/test_authors_fixture.py checks
without the authors' code: the seed, markov-lens's initial weights for it, how the batches are
drawn (and their SHA-256), and the authors' per-step training losses. An existing file is never
overwritten unless ``--force``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import einops
import torch
from torch import Tensor

from training.chains import BinaryChain
from training.config import ModelConfig
from training.model import MarkovTransformer
from training.recipe import TrainConfig
from training.stacked import Member
from training.trainer import EvalSet, PrecomputedLogits, evaluate, member_batches, run_references
from training.trainer import train as train_ours
from training.trainer.loop import initial_model

FIXTURE_FORMAT = 1
BATCHES_HOW = (
    "training.trainer.member_batches([BinaryChain(p, q)], [seed], step, train_config, cpu)[0] "
    "for step 0..iters-1 (a generator seeded with SeedSequence([seed, 1, step]), "
    "train_config.sample_len = seq_len + 1 tokens per sequence); the authors' x = tokens[:, :-1], "
    "y = tokens[:, 1:]"
)


class UsageError(Exception):
    """Bad command-line input: one line, exit code 2."""


# --- the authors' code ----------------------------------------------------------------
def authors_src(path: str) -> Path:
    """The authors' Markov-LLM/src folder inside `path` (the repository root, Markov-LLM, or
    its src)."""
    root = Path(path).expanduser()
    for cand in (root / "Markov-LLM" / "src", root / "src", root):
        if (cand / "models" / "base.py").is_file() and (cand / "optim" / "base.py").is_file():
            return cand.resolve()
    raise UsageError(
        f"authors repository {path!r}: no Markov-LLM/src/models/base.py under it; pass a "
        "checkout of github.com/Bond1995/Markov (its root, Markov-LLM or Markov-LLM/src)"
    )


def authors_commit(src: Path) -> str | None:
    """The git commit of the checkout holding `src` (None when it is not a git work tree)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True
        )
    except OSError:
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def import_authors(src: Path) -> tuple[types.ModuleType, types.ModuleType]:
    """The authors' ``main`` and ``optim.base`` modules, imported from `src` (empty stand-ins
    for tiktoken and wandb when they are not installed)."""
    for name in ("tiktoken", "wandb"):
        try:
            __import__(name)
        except ImportError:
            stub = types.ModuleType(name)
            stub.get_encoding = lambda *a, **k: None
            stub.init = stub.log = lambda *a, **k: None
            sys.modules[name] = stub
    if str(src) not in sys.path:
        sys.path.insert(0, str(src))
    import main as authors_main  # noqa: PLC0415 (the authors' main.py, from src)
    import optim.base as authors_loop  # noqa: PLC0415

    return authors_main, authors_loop


def authors_state_dict(model: MarkovTransformer) -> dict[str, Tensor]:
    """`model`'s weights under the authors' GPTBase names and nn.Linear [out, in] layout
    (tied: transformer.wte.weight and lm_head.weight both W_E)."""
    cfg = model.cfg
    if not (cfg.tie_embeddings and cfg.unembed_bias and not cfg.ln_bias and not cfg.linear_bias):
        raise ValueError("the authors' GPT is tied, with b_U and no other bias")
    out = {
        "transformer.wte.weight": model.embed.W_E,
        "transformer.wpe.weight": model.pos_embed.W_pos,
        "transformer.ln_f.weight": model.ln_final.w,
        "lm_head.weight": model.embed.W_E,
        "lm_head.bias": model.unembed.b_U,
    }
    for i, block in enumerate(model.blocks):
        a, h = block.attn, f"transformer.h.{i}."
        qkv = [einops.rearrange(w, "h d e -> (h e) d") for w in (a.W_Q, a.W_K, a.W_V)]
        out[h + "ln_1.weight"] = block.ln1.w
        out[h + "attn.c_attn.weight"] = torch.cat(qkv, dim=0)
        out[h + "attn.c_proj.weight"] = einops.rearrange(a.W_O, "h e d -> d (h e)")
        out[h + "ln_2.weight"] = block.ln2.w
        out[h + "mlp.c_fc.weight"] = block.mlp.W_in.T
        out[h + "mlp.c_proj.weight"] = block.mlp.W_out.T
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


def run_authors(
    src: Path, init: MarkovTransformer, batches: list[Tensor], args: argparse.Namespace
) -> tuple[list[float], torch.nn.Module, str]:
    """Train the authors' GPT from `init`'s weights on `batches` with their main.main; returns
    its per-step training losses (nats), the trained model and what their code printed."""
    authors_main, authors_loop = import_authors(src)
    seq_len = batches[0].shape[1] - 1
    losses: list[float] = []
    built: list[torch.nn.Module] = []
    served = [0]

    def get_model(a):
        model = original_get_model(a)
        model.load_state_dict(authors_state_dict(init), strict=True)
        model.register_forward_hook(
            lambda mod, inp, out: (
                losses.append(float(out["loss"].detach())) if mod.training else None
            )
        )
        built.append(model)
        return model

    def get_batch(P, sequence_length, batch_size, generator, extra_args, device="cpu"):
        tokens = batches[served[0]].to(device)
        served[0] += 1
        # contiguous, as their get_batch returns them (its .to(int) copies)
        return tokens[:, :sequence_length].contiguous(), tokens[:, 1:].contiguous()

    argv = [
        "main.py", "--device", "cpu", "--no_compile",
        "--p", repr(args.p), "--q", repr(args.q),
        "--batch_size", str(args.batch), "--sequence_length", str(seq_len),
        "--iterations", str(args.steps), "--eval_freq", str(args.steps),
    ]  # fmt: skip
    original_get_model = authors_main.get_model
    saved = (
        sys.argv,
        authors_loop.get_batch,
        authors_loop.eval_pred_baseline,
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        os.getcwd(),
    )
    printed = io.StringIO()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            sys.argv = [*argv, "--results_base_folder", str(Path(tmp) / "exps")]
            authors_main.get_model = get_model
            authors_loop.get_batch = get_batch
            authors_loop.eval_pred_baseline = lambda *a, **k: float("nan")
            os.chdir(tmp)  # their main saves model.pt in the working directory
            with contextlib.redirect_stdout(printed):
                authors_main.main(authors_main.get_args())
        finally:
            sys.argv, authors_loop.get_batch, authors_loop.eval_pred_baseline = saved[:3]
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[3:5]
            os.chdir(saved[5])
            authors_main.get_model = original_get_model
    if served[0] != args.steps or len(losses) != args.steps:
        raise RuntimeError(
            f"the authors' loop drew {served[0]} batches and made {len(losses)} training "
            f"forwards for {args.steps} steps"
        )
    return losses, built[0], printed.getvalue()


# --- markov-lens ----------------------------------------------------------------------
def recipe(args: argparse.Namespace) -> TrainConfig:
    """The paper's recipe at this size, targets "authors", an evaluation after every update
    (so each metric's train_loss is that update's loss)."""
    return TrainConfig(
        iters=args.steps,
        batch=args.batch,
        seq_len=args.seq_len,
        eval_every=1,
        eval_batches=1,
        checkpoints_per_octave=0,
        save_every=0,
        targets="authors",
        device="cpu",
    )


def per_step_losses(result) -> list[float]:
    """A trainer run's training loss of every update (nats; needs eval_every=1)."""
    return [m["train_loss"] for m in result.metrics[1:]]


def batches_sha256(batches: list[Tensor]) -> str:
    """SHA-256 of the batches' tokens, as uint8 bytes in step, row, position order."""
    digest = hashlib.sha256()
    for b in batches:
        digest.update(b.to(torch.uint8).contiguous().numpy().tobytes())
    return digest.hexdigest()


def plateau_exit(losses: list[float], refs: dict[str, Any]) -> int | None:
    """First step whose loss is below halfway from the unigram loss to the entropy rate."""
    half = (refs["unigram_loss"] + refs["optimal_loss"]) / 2
    return next((i for i, v in enumerate(losses) if v < half), None)


@torch.no_grad()
def authors_logits(model: torch.nn.Module, tokens: Tensor) -> Tensor:
    """The authors' GPT's logits [batch, pos, d_vocab] (it returns all positions only when
    given targets; the loss it computes with the dummy targets is ignored)."""
    model.eval()
    return model(tokens, targets=torch.zeros_like(tokens), get_logits=True)["logits"]


def side_by_side(args: argparse.Namespace) -> dict[str, Any]:
    """Both trainings from the same init on the same batches; the comparison's numbers."""
    src = authors_src(args.authors_repo)
    chain = BinaryChain(args.p, args.q)
    tc = recipe(args)
    mc = ModelConfig.paper(n_ctx=args.seq_len)
    cpu = torch.device("cpu")
    init = initial_model(Member(mc, chain, args.seed), cpu)
    batches = [member_batches([chain], [args.seed], s, tc, cpu)[0] for s in range(args.steps)]
    t0 = time.perf_counter()
    theirs, their_model, printed = run_authors(src, init, batches, args)
    t1 = time.perf_counter()
    result = train_ours(mc, chain, tc, seed=args.seed, progress=False)
    t2 = time.perf_counter()
    ours = per_step_losses(result)
    diffs = [abs(a - b) for a, b in zip(theirs, ours, strict=True)]
    worst = max(range(len(diffs)), key=diffs.__getitem__)
    refs = run_references(chain, tc)
    es = EvalSet(chain, tc, args.seed, cpu)
    mine = evaluate(result.model, es, refs, contextlib.nullcontext)
    lg = [authors_logits(their_model, t) for t in es.tokens]
    yours = evaluate(PrecomputedLogits(es.tokens, lg), es, refs, contextlib.nullcontext)
    return {
        "src": src,
        "init": init,
        "batches": batches,
        "train_config": tc,
        "model_config": mc,
        "authors_losses": theirs,
        "markov_lens_losses": ours,
        "max_abs_difference": diffs[worst],
        "worst_step": worst,
        "plateau_exit": {
            "authors": plateau_exit(theirs, refs),
            "markov_lens": plateau_exit(ours, refs),
        },
        "final": {"authors": yours, "markov_lens": mine},
        "seconds": {"authors": t1 - t0, "markov_lens": t2 - t1},
        "authors_printed": printed,
    }


def fixture(out: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The committed fixture (JSON) of one side-by-side."""
    init = out["init"]
    return {
        "format": FIXTURE_FORMAT,
        "about": (
            "The authors' per-step training losses (Bond1995/Markov, Markov-LLM/src, main.main "
            "on a CPU, float32) from markov-lens's initial weights for `seed` on markov-lens's "
            "batches; written by benchmarks/authors_side_by_side.py --write-fixture, checked by "
            "tests/benchmarks/test_authors_fixture.py"
        ),
        "authors_code": {
            "repository": "github.com/Bond1995/Markov",
            "folder": "Markov-LLM/src",
            "commit": args.authors_commit or authors_commit(out["src"]),
        },
        "seed": args.seed,
        "chain": {"p": args.p, "q": args.q},
        "model_config": out["model_config"].to_dict(),
        "train_config": out["train_config"].to_dict(),
        "batches": {"how": BATCHES_HOW, "sha256": batches_sha256(out["batches"])},
        "initial_weights": {n: p.detach().tolist() for n, p in init.named_parameters()},
        "authors_losses": out["authors_losses"],
        "at_writing": {
            "max_abs_difference_markov_lens": out["max_abs_difference"],
            "torch": torch.__version__,
            "machine": platform.machine(),
            "threads": torch.get_num_threads(),
        },
    }


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="markov-lens against the authors' code: same init, same batches.",
    )
    ap.add_argument("authors_repo", help="a checkout of github.com/Bond1995/Markov")
    ap.add_argument("--steps", type=int, default=400, help="updates (default 400)")
    ap.add_argument("--batch", type=int, default=16, help="sequences per update (default 16)")
    ap.add_argument("--seq-len", type=int, default=1024, help="tokens read (default 1024)")
    ap.add_argument("--p", type=float, default=0.5, help="P(1 | 0) (default 0.5)")
    ap.add_argument("--q", type=float, default=0.8, help="P(0 | 1) (default 0.8)")
    ap.add_argument("--seed", type=int, default=0, help="markov-lens seed (default 0)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--write-fixture", metavar="PATH", help="also write the test fixture")
    ap.add_argument("--authors-commit", help="the checkout's commit, if it is not a git tree")
    ap.add_argument("--force", action="store_true", help="overwrite an existing fixture")
    ap.add_argument("--verbose", action="store_true", help="show what the authors' code prints")
    args = ap.parse_args(argv)
    for name, low in (("steps", 2), ("batch", 1), ("seq_len", 2), ("threads", 1)):
        if getattr(args, name) < low:
            flag = "--" + name.replace("_", "-")
            raise UsageError(f"{flag} {getattr(args, name)}: must be an integer >= {low}")
    for name in ("p", "q"):
        v = getattr(args, name)
        if not (math.isfinite(v) and 0 < v < 1):
            raise UsageError(f"--{name} {v!r}: must be a probability in (0, 1)")
    if args.write_fixture and Path(args.write_fixture).exists() and not args.force:
        raise UsageError(f"--write-fixture {args.write_fixture}: exists (pass --force to replace)")
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse(argv)
        authors_src(args.authors_repo)
        TrainConfig(iters=args.steps, batch=args.batch, seq_len=args.seq_len)
    except (UsageError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    out = side_by_side(args)
    if args.verbose:
        print(out["authors_printed"])
    n = len(out["authors_losses"])
    print(
        f"authors' code ({out['src']}) vs markov-lens: {n} updates of {args.batch} x "
        f"{args.seq_len}, p={args.p}, q={args.q}, tied, seed {args.seed}, CPU float32, "
        f"{args.threads} thread(s)"
    )
    print(
        f"max |loss difference| {out['max_abs_difference']:.3g} nats (step {out['worst_step']}); "
        f"final training loss: authors {out['authors_losses'][-1]:.6f}, "
        f"markov-lens {out['markov_lens_losses'][-1]:.6f}"
    )
    print(
        f"plateau exit (first step below halfway to the entropy rate): authors "
        f"{out['plateau_exit']['authors']}, markov-lens {out['plateau_exit']['markov_lens']}"
    )
    for who in ("authors", "markov_lens"):
        f = out["final"][who]
        print(
            f"final {who:11s}: p_hat {f['p_hat']:.6f}  q_hat {f['q_hat']:.6f}  "
            f"eval loss {f['eval_loss']:.6f}"
        )
    s = out["seconds"]
    print(f"seconds: authors {s['authors']:.1f}, markov-lens {s['markov_lens']:.1f}")
    if args.write_fixture:
        path = Path(args.write_fixture)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(fixture(out, args)) + "\n")
        print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
