"""Train a MarkovTransformer on a Markov chain, with exact references, checkpoints and resume.

``train(model_config, chain, train_config, seed, out_dir)`` runs the paper's recipe
(training.recipe.TrainConfig) and returns a TrainResult: the summary dict, with the trained
model as ``.model`` and the metric records as ``.metrics``. With out_dir it writes a run
directory (training.runs); with out_dir=None it trains in memory.

Reproducibility. Every source of randomness is a generator seeded from (seed, stream, step)
through numpy's SeedSequence: the model init (stream 0), the training batch of update t
(stream 1, step t: a fresh batch every step, independent of how the run was interrupted)
and the fixed held-out evaluation batches (stream 2). There is no running generator, so the
"generator state" of a checkpoint is its step. The same config and seed give the same
metrics (timing fields aside) and weights on the same device and torch thread count; a run
resumed from any checkpoint ends bit-identical on CPU to one that never stopped, because a
checkpoint holds the weights, the AdamW moments, the step (which fixes the learning rate:
TrainConfig.lr_at) and the running train-loss accumulators (safetensors + JSON, no pickle).

Metrics (one JSON object per evaluation in metrics.jsonl; losses in nats, positions 0..N-2
of every held-out sequence): step, eval_loss, gap_entropy = eval_loss - L*, gap_unigram =
eval_loss - L_u, kl = mean KL(true next-token law || model) (chain.next_token_probs: the
kernel row, or the in-context Bayes predictive), kl_unigram = mean KL(unigram predictor ||
model), rel_excess, rel_unigram, dependence (training.verdicts), accuracy (argmax = next
token), p_hat = mean predicted P(1 | x_n = 0) and q_hat = mean predicted P(0 | x_n = 1)
(binary first-order chains; kernel_hat for other small fixed kernels), train_loss (mean
training loss since the previous evaluation), lr (of the update that produced this step;
step 0: the first update's), tokens_seen, wall_seconds and tokens_per_s (since the
previous evaluation).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from training.chains import InContextChain, MarkovChain, add_pseudocount_probs, chain_from_dict
from training.checkpoints import CheckpointError, read_checkpoint, save_checkpoint
from training.config import ModelConfig
from training.devices import resolve_device  # noqa: F401 (also imported from here)
from training.inits import apply_init
from training.locks import lock_directory
from training.model import MarkovTransformer
from training.options import RunConfig
from training.recipe import TrainConfig
from training.references import in_context_losses, reference_losses, stationary_marginal
from training.runs import (
    CHECKPOINTS,
    CONFIG,
    LATEST,
    METRICS,
    STEP_DIR,
    SUMMARY,
    read_json,
    read_metrics,
    step_dir_name,
    write_json_atomic,
)
from training.stacked import (
    Member,
    StackedWeights,
    as_member,
    check_same_architecture,
    clip_member_grads,
    member_losses,
    sample_members,
    stacked_logits,
    train_key,
)
from training.verdicts import VerdictRule, relative, summarise_metrics

STREAM_INIT, STREAM_TRAIN, STREAM_EVAL = 0, 1, 2
RUN_FORMAT = "markov-lens-run/1"
DECAYED_LEAVES = ("W_Q", "W_K", "W_V", "W_O", "W_in", "W_out")
TIMING_KEYS = ("wall_seconds", "tokens_per_s")
IN_CONTEXT_REFERENCE_TOKENS = 1 << 20  # Monte Carlo tokens for in-context reference losses


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""


class TrainResult(dict):
    """The summary dict of a run, with the trained model (`.model`, eval mode), the metric
    records (`.metrics`) and the run directory (`.path`, None when trained in memory)."""

    def __init__(
        self,
        summary: dict[str, Any],
        model: MarkovTransformer,
        metrics: list[dict[str, Any]],
        path: Path | None,
    ):
        super().__init__(summary)
        self.model = model
        self.metrics = metrics
        self.path = path

    @property
    def summary(self) -> dict[str, Any]:
        return dict(self)


# ----------------------------------------------------------------------------- seeding


def derive_seed(seed: int, stream: int, step: int = 0) -> int:
    """A 63-bit seed for (run seed, stream, step), via numpy's SeedSequence (deterministic)."""
    hi, lo = np.random.SeedSequence([int(seed), int(stream), int(step)]).generate_state(2)
    return ((int(hi) << 32) | int(lo)) & ((1 << 63) - 1)


def make_generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


# --------------------------------------------------------------------------- optimiser


def decay_parameter_names(model: MarkovTransformer, train_config: TrainConfig) -> list[str]:
    """Names of the parameters AdamW decays (recipe.py explains the paper's rule): W_Q, W_K,
    W_V, W_O, W_in, W_out, an untied unembed.W_U; a tied embed.W_E only with
    decay_tied_embedding. Never W_pos, LayerNorm weights or biases."""
    names = []
    for name, _ in model.named_parameters():
        leaf = name.split(".")[-1]
        if leaf in DECAYED_LEAVES or name == "unembed.W_U":
            names.append(name)
        elif name == "embed.W_E" and model.cfg.tie_embeddings and train_config.decay_tied_embedding:
            names.append(name)
    return names


def make_optimizer(
    model: MarkovTransformer, train_config: TrainConfig
) -> tuple[torch.optim.AdamW, list[str]]:
    """AdamW with a decay group (the paper's weight decay) and a no-decay group; also the
    parameter names in the optimiser's index order (for checkpointing its state)."""
    decay = set(decay_parameter_names(model, train_config))
    params = dict(model.named_parameters())
    decay_names = sorted(n for n in params if n in decay)
    other_names = sorted(n for n in params if n not in decay)
    groups = [
        {"params": [params[n] for n in decay_names], "weight_decay": train_config.weight_decay},
        {"params": [params[n] for n in other_names], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(
        groups, lr=train_config.lr, betas=tuple(train_config.betas), eps=train_config.eps
    )
    return opt, decay_names + other_names


def lr_schedule(train_config: TrainConfig) -> list[float]:
    """The learning rate of every update 0..iters-1 (TrainConfig.lr_at: torch's OneCycleLR in
    closed form, which the tests check against torch itself)."""
    return [train_config.lr_at(i) for i in range(train_config.iters)]


# --------------------------------------------------------------------------- references


def run_references(chain: MarkovChain, train_config: TrainConfig) -> dict[str, Any]:
    """The two reference losses of the verdict (nats): optimal_loss L* and unigram_loss L_u.

    Fixed chains: exact (entropy rate, H(pi), plus references.reference_losses). In-context
    chains: references.in_context_losses at the training length, Bayes and add-alpha unigram
    means (Monte Carlo, about 2^20 tokens, seed 0).
    """
    if isinstance(chain, InContextChain):
        n_seq = max(64, IN_CONTEXT_REFERENCE_TOKENS // train_config.seq_len)
        ic = in_context_losses(
            chain, length=train_config.seq_len, n_sequences=n_seq, seed=0, beta=chain.alpha
        )
        return {
            "kind": "in_context",
            "optimal_loss": ic["bayes"]["mean"],
            "unigram_loss": ic["unigram"]["mean"],
            "uniform_loss": ic["uniform"]["mean"],
            "oracle_loss": ic["oracle"]["mean"],
            "monte_carlo_se": ic["bayes"]["se"],
            "length": train_config.seq_len,
            "n_sequences": n_seq,
        }
    refs = reference_losses(chain)
    return {
        "kind": "fixed",
        "optimal_loss": refs["entropy_rate"],
        "unigram_loss": refs["unigram_loss"],
        "order_losses": refs["order_losses"],
        "stationary": refs["stationary"],
    } | ({"p": refs["p"], "q": refs["q"], "pi_1": refs["pi_1"]} if "p" in refs else {})


# --------------------------------------------------------------------------- evaluation


class EvalSet:
    """Fixed held-out batches with everything the metrics compare against, precomputed."""

    def __init__(
        self, chain: MarkovChain, train_config: TrainConfig, seed: int, device: torch.device
    ):
        self.chain = chain
        self.in_context = isinstance(chain, InContextChain)
        S, k = chain.n_states, chain.order
        self.S, self.k = S, k
        eval_seed = seed if train_config.eval_seed is None else train_config.eval_seed
        gen = make_generator(device, derive_seed(eval_seed, STREAM_EVAL))
        self.tokens: list[Int[Tensor, "batch pos"]] = []
        self.true: list[Float[Tensor, "batch pos_m1 S"]] = []
        self.unigram: list[Float[Tensor, "batch pos_m1 S"]] = []
        self.context: list[Int[Tensor, "batch npos"]] = []
        pi = None if self.in_context else stationary_marginal(chain).to(device)
        for _ in range(train_config.eval_batches):
            tokens = chain.sample(train_config.batch, train_config.seq_len, generator=gen)
            self.tokens.append(tokens)
            self.true.append(chain.next_token_probs(tokens)[:, :-1])
            if self.in_context:
                uni = add_pseudocount_probs(tokens, S, 0, chain.alpha)[:, :-1]
            else:
                uni = pi.expand(tokens.shape[0], tokens.shape[1] - 1, S)
            self.unigram.append(uni)
            # context (last k tokens, base S) of predictions at positions k-1..N-2
            win = tokens[:, :-1].unfold(1, k, 1)
            powers = S ** torch.arange(k - 1, -1, -1, device=device)
            self.context.append((win * powers).sum(-1))
        self.M = S**k
        self.true_information = None
        if not self.in_context:
            means, weights = self.group_means(self.true)
            self.true_information = information(means, weights)

    def group_means(
        self, probs: list[Float[Tensor, "batch pos_m1 S"]]
    ) -> tuple[Float[Tensor, "M S"], Float[Tensor, " M"]]:
        """Mean prediction given each context of the last k tokens, and context frequencies."""
        sums = torch.zeros(self.M, self.S, dtype=torch.float64, device=probs[0].device)
        counts = torch.zeros(self.M, dtype=torch.float64, device=probs[0].device)
        for p, z in zip(probs, self.context, strict=True):
            p = p[:, self.k - 1 :].reshape(-1, self.S)
            z = z.reshape(-1)
            sums.index_add_(0, z, p)
            counts.index_add_(0, z, torch.ones_like(z, dtype=torch.float64))
        means = sums / counts.clamp_min(1)[:, None]
        return means, counts / counts.sum()


def information(means: Float[Tensor, "M S"], weights: Float[Tensor, " M"]) -> float:
    """sum_z w_z KL(m_z || sum_z' w_z' m_z'), nats: what the mean predictions say about z."""
    mbar = (weights[:, None] * means).sum(0)
    kl = torch.special.xlogy(means, means) - torch.special.xlogy(means, mbar.clamp_min(1e-300))
    return float((weights * kl.sum(-1)).sum())


def context_information(probs: list[Float[Tensor, "batch pos_m1 S"]]) -> float:
    """mean_n KL(p_n || mean p), nats: how much the predictions vary with their whole context
    (0 for a context-free predictor, however it reads the context)."""
    p = torch.cat([x.reshape(-1, x.shape[-1]) for x in probs]).double()
    mbar = p.mean(0)
    kl = torch.special.xlogy(p, p) - torch.special.xlogy(p, mbar.clamp_min(1e-300))
    return float(kl.sum(-1).mean())


def _kl_rows(true: Tensor, logp: Tensor) -> Tensor:
    """KL(true || exp(logp)) over the last dim (0 log 0 = 0)."""
    return (torch.special.xlogy(true, true) - true * logp).sum(-1)


@torch.no_grad()
def evaluate(
    model: MarkovTransformer, eval_set: EvalSet, refs: dict[str, Any], autocast: Callable
) -> dict[str, Any]:
    """Metrics of `model` on the fixed evaluation batches (see the module docstring)."""
    was_training = model.training
    model.eval()
    loss_sum = kl_sum = klu_sum = correct = 0.0
    n = 0
    preds = []
    for tokens, true, uni in zip(eval_set.tokens, eval_set.true, eval_set.unigram, strict=True):
        with autocast():
            logits = model(tokens)
        logp = logits[:, :-1].double().log_softmax(-1)
        targets = tokens[:, 1:]
        loss_sum += float(-logp.gather(-1, targets[..., None]).sum())
        kl_sum += float(_kl_rows(true, logp).sum())
        klu_sum += float(_kl_rows(uni, logp).sum())
        correct += float((logp.argmax(-1) == targets).sum())
        n += targets.numel()
        preds.append(logp.exp())
    model.train(was_training)
    L_opt, L_uni = refs["optimal_loss"], refs["unigram_loss"]
    gap = L_uni - L_opt
    out: dict[str, Any] = {
        "eval_loss": loss_sum / n,
        "gap_entropy": loss_sum / n - L_opt,
        "gap_unigram": loss_sum / n - L_uni,
        "kl": kl_sum / n,
        "kl_unigram": klu_sum / n,
        "accuracy": correct / n,
    }
    out["rel_excess"] = relative(out["kl"], gap)
    out["rel_unigram"] = relative(out["kl_unigram"], gap)
    if eval_set.in_context:
        r, u = out["rel_excess"], out["rel_unigram"]
        out["dependence"] = u / (u + r) if r is not None and u is not None and u + r > 0 else None
    else:
        means, weights = eval_set.group_means(preds)
        true_info = eval_set.true_information
        out["dependence"] = information(means, weights) / true_info if true_info > 1e-12 else None
        out["context_dependence"] = (
            context_information(preds) / true_info if true_info > 1e-12 else None
        )
        if eval_set.S == 2 and eval_set.k == 1:
            out["p_hat"] = float(means[0, 1])
            out["q_hat"] = float(means[1, 0])
        elif means.numel() <= 64:
            out["kernel_hat"] = means.tolist()
    if not math.isfinite(out["eval_loss"]):
        for key in ("rel_excess", "rel_unigram", "dependence", "context_dependence"):
            if key in out:
                out[key] = None
    return out


# ------------------------------------------------------------------------- checkpoints


def _optimizer_state(
    opt: torch.optim.Optimizer, names: list[str]
) -> tuple[dict[str, Tensor], list[dict]]:
    sd = opt.state_dict()
    tensors = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            tensors[f"optim/{names[idx]}/{key}"] = torch.as_tensor(value)
    groups = [{k: v for k, v in g.items()} for g in sd["param_groups"]]
    for g in groups:
        g["betas"] = list(g["betas"])
    return tensors, groups


def _load_optimizer_state(
    opt: torch.optim.Optimizer, names: list[str], tensors: dict[str, Tensor], groups: list[dict]
) -> None:
    index = {name: i for i, name in enumerate(names)}
    state: dict[int, dict[str, Tensor]] = {}
    for key, value in tensors.items():
        if not key.startswith("optim/"):
            continue
        _, name, field = key.split("/", 2)
        if name not in index:
            raise CheckpointError(f"optimiser state for unknown parameter {name!r}")
        state.setdefault(index[name], {})[field] = value
    groups = [dict(g) for g in groups]
    for g in groups:
        g["betas"] = tuple(g["betas"])
    opt.load_state_dict({"state": state, "param_groups": groups})


def _resume_candidates(run_dir: Path) -> list[tuple[int, Path]]:
    root = run_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        m = STEP_DIR.match(entry.name)
        if m:
            found.append((int(m.group(1)), entry))
        elif entry.name in (LATEST, f".{LATEST}.old"):
            found.append((-1, entry))  # step known after reading
    return found


def check_checkpoint_config(ckpt, model_config: ModelConfig) -> None:
    """CheckpointError naming the fields where `ckpt` was saved from another architecture."""
    mine, theirs = model_config.to_dict(), ckpt.config.to_dict()
    diff = [k for k in mine if mine.get(k) != theirs.get(k)]
    if diff:
        detail = ", ".join(f"{k}={theirs.get(k)!r} (expected {mine.get(k)!r})" for k in diff)
        raise CheckpointError(f"{ckpt.path} is from another config: {detail}")


def find_resume_checkpoint(run_dir: Path, model_config: ModelConfig | None = None):
    """The verified checkpoint with the highest step that holds resume state, or None.
    Unreadable or corrupt candidates are skipped with a warning; with `model_config`, a
    candidate saved from another architecture is refused (CheckpointError), never trained
    over."""
    best = None
    for _, path in sorted(_resume_candidates(run_dir), key=lambda t: t[0], reverse=True):
        try:
            ckpt = read_checkpoint(path)
        except CheckpointError as err:
            warnings.warn(f"skipping checkpoint {path}: {err}", stacklevel=2)
            continue
        if "resume" not in ckpt.metadata:
            continue
        if model_config is not None:
            check_checkpoint_config(ckpt, model_config)
        if best is None or ckpt.step > best.step:
            best = ckpt
    return best


def _clean_partial_saves(run_dir: Path) -> None:
    """Remove temporary directories a killed save left in checkpoints/ (never a checkpoint)."""
    root = run_dir / CHECKPOINTS
    if root.is_dir():
        for entry in root.iterdir():
            if entry.name.startswith(".") and ".tmp-" in entry.name and entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)


# ------------------------------------------------------------------------------ train


def _config_dict(model_config, chain, train_config, seed) -> dict[str, Any]:
    return {
        "model": model_config.to_dict(),
        "chain": chain.to_dict(),
        "train": train_config.to_dict(),
        "seed": seed,
    }


def _with_defaults(section: str, d: Any) -> Any:
    """A saved model/train section with the fields added since filled with their defaults."""
    kind = {"model": ModelConfig, "train": TrainConfig}.get(section)
    if kind is None or not isinstance(d, dict):
        return d
    try:
        return kind.from_dict(d).to_dict()
    except (TypeError, ValueError):
        return d


def _config_differences(saved: dict, new: dict) -> list[str]:
    diffs = []
    for section in ("model", "chain", "train", "seed"):
        a, b = saved.get(section), new.get(section)
        a = _with_defaults(section, a)  # a field added since the run was saved: its default
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                if section == "train" and key == "device":
                    continue
                if a.get(key) != b.get(key):
                    diffs.append(f"{section}.{key}: saved {a.get(key)!r}, now {b.get(key)!r}")
        elif a != b:
            diffs.append(f"{section}: saved {a!r}, now {b!r}")
    return diffs


def _prepare_run_dir(out_dir: Path, config: dict, resume: bool, force: bool) -> bool:
    """Check/create the run directory. Returns True when the run is already finished (and
    resume was asked for), so there is nothing to do."""
    # interp/: analyses of the old model (markov-lens explain, patch, ...), stale after --force
    ours = [out_dir / n for n in (CONFIG, METRICS, SUMMARY, CHECKPOINTS, "interp")]
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a directory")
    has_config = (out_dir / CONFIG).exists()
    finished = (out_dir / SUMMARY).exists()
    if force:
        for path in ours:
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    elif has_config:
        saved = read_json(out_dir / CONFIG)
        diffs = _config_differences(saved, config)
        if finished and not resume:
            raise FileExistsError(
                f"{out_dir} holds a finished run (summary.json); pass force=True (--force) to "
                "train it again from scratch, or choose another directory"
            )
        if not resume:
            raise FileExistsError(
                f"{out_dir} holds an unfinished run; pass resume=True (--resume) to continue "
                "it or force=True (--force) to start over"
            )
        if diffs:
            raise ValueError(f"cannot resume {out_dir}: its config differs: " + "; ".join(diffs))
        return finished
    elif any(p.exists() for p in ours[1:]):
        raise FileExistsError(
            f"{out_dir} holds run files but no {CONFIG}; pass force=True (--force) to replace "
            "them or choose another directory"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    if not (out_dir / CONFIG).exists():
        write_json_atomic(out_dir / CONFIG, config)
    return False


def _truncate_metrics(path: Path, last_step: int) -> list[dict[str, Any]]:
    """Keep the records with step <= last_step (rewritten atomically); return them."""
    kept = [m for m in read_metrics(path) if m["step"] <= last_step]
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        for m in kept:
            f.write(json.dumps(m) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return kept


def train(
    model_config: ModelConfig,
    chain: MarkovChain | dict,
    train_config: TrainConfig | None = None,
    seed: int = 0,
    out_dir: str | os.PathLike | None = None,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    stop_at: int | None = None,
) -> TrainResult:
    """Train a MarkovTransformer on `chain` with `train_config` (default: the paper's recipe).

    out_dir: run directory to write (config.json, metrics.jsonl, checkpoints/, summary.json);
    None trains in memory. A finished run is never overwritten unless force=True; an
    unfinished one is continued with resume=True (from its newest checkpoint, restoring the
    optimiser state, step and loss accumulators), or restarted with force=True. resume=True on
    a finished run returns its summary (and last model) without training.
    stop_at: stop cleanly after this step with a resume checkpoint (status "paused").
    progress: a tqdm bar (step, loss, gap to the entropy rate) when stderr is a terminal.

    The run is an ensemble of one (train_ensemble). Returns the summary (a TrainResult dict;
    `.model`, `.metrics`, `.path`). Raises TrainingDiverged (after writing a "diverged"
    summary.json) if the loss turns NaN/inf.
    """
    if isinstance(chain, dict):
        chain = chain_from_dict(chain)
    train_config = train_config or TrainConfig()
    if not isinstance(model_config, ModelConfig):
        raise ValueError(f"model_config must be a ModelConfig, got {type(model_config).__name__}")
    if model_config.n_ctx < train_config.seq_len:
        raise ValueError(
            f"model n_ctx={model_config.n_ctx} is shorter than seq_len={train_config.seq_len}"
        )
    if model_config.d_vocab != chain.n_states:
        raise ValueError(
            f"model d_vocab={model_config.d_vocab} but the chain has {chain.n_states} states"
        )
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    (result,) = train_ensemble(
        [Member(model_config, chain, seed)],
        train_config,
        out_dirs=None if out_dir is None else [out_dir],
        resume=resume,
        force=force,
        progress=progress,
        stop_at=stop_at,
    )
    if result.get("status") == "diverged":
        raise TrainingDiverged(result["message"])
    return result


def _train_step(run: _Run, tokens: Int[Tensor, "member batch pos"]) -> list[float]:
    """One update of every active member of `run` on its batch tokens[m]; returns their
    losses (nats), in the order of run.active after the update. A member whose loss is not
    finite is dropped before the update (nothing of it is updated)."""
    while True:
        losses = member_losses(run.forward(tokens).float(), tokens)
        values = losses.detach().tolist()
        bad = [r for r, v in enumerate(values) if not math.isfinite(v)]
        if not bad:
            break
        keep = [r for r in range(len(values)) if r not in bad]
        run.drop(bad, values)
        if not keep:
            return []
        tokens = tokens[keep]
    run.opt.zero_grad(set_to_none=True)
    losses.sum().backward()
    if run.tc.grad_clip is not None:
        clip_member_grads(run.weights, run.tc.grad_clip)
    run.opt.step()
    return values


def _diverged(run_dir, step, loss_value, lr, metrics, refs, seed, wall_seconds) -> None:
    """Stop a run whose training loss at `step` (the weights after `step` updates) is not
    finite: drop the checkpoint of those weights if one was saved, write a "diverged"
    summary naming the last good checkpoint, raise TrainingDiverged."""
    kept = None
    if run_dir is not None:
        root = run_dir / CHECKPOINTS
        shutil.rmtree(root / step_dir_name(step), ignore_errors=True)
        for name in (LATEST, f".{LATEST}.old"):
            try:
                if read_checkpoint(root / name).step >= step:
                    shutil.rmtree(root / name, ignore_errors=True)
            except CheckpointError:
                pass
        ckpt = find_resume_checkpoint(run_dir)
        kept = str(ckpt.path) if ckpt is not None else None
    message = (
        f"the training loss became {loss_value} at step {step} (the weights after {step} "
        f"updates, lr {lr:.3g}); stopped. "
        + (f"The last good checkpoint is {kept}. " if kept else "")
        + "Lower the learning rate (--lr) or enable gradient clipping (grad_clip)."
    )
    if run_dir is not None:
        last = metrics[-1] if metrics else {}
        write_json_atomic(
            run_dir / SUMMARY,
            {
                "status": "diverged",
                "message": message,
                "verdict": "neither",
                "diverged_step": step,
                "last_good_checkpoint": kept,
                "final_eval_loss": last.get("eval_loss"),
                "entropy_rate": refs["optimal_loss"],
                "unigram_loss": refs["unigram_loss"],
                "steps": step,
                "seed": seed,
                "wall_seconds": wall_seconds,
                "plateau_exit_step": None,
                "plateau_steps": None,
            },
        )
    raise TrainingDiverged(message)


def _summary(metrics, refs, gap, chain, train_config, seed, wall_seconds, device, model) -> dict:
    last = metrics[-1]
    judged = summarise_metrics(metrics, gap, VerdictRule(), refs.get("order_losses"))
    out = {
        "status": "finished",
        "verdict": judged["verdict"],
        "final_eval_loss": last["eval_loss"],
        "entropy_rate": refs["optimal_loss"],
        "unigram_loss": refs["unigram_loss"],
        "gap": gap,
        "final_kl": last["kl"],
        "final_rel_excess": last["rel_excess"],
        "final_rel_unigram": last["rel_unigram"],
        "final_dependence": last["dependence"],
        "final_context_dependence": last.get("context_dependence"),
        "final_accuracy": last["accuracy"],
        "plateau_exit_step": judged["plateau_exit_step"],
        "plateau_steps": judged["plateau_steps"],
        "plateau_first_step": judged["plateau_first_step"],
        **{
            k: judged[k]
            for k in ("verdict_reason", "order_label", "order_reached", "order_excess")
            if k in judged
        },
        "steps": train_config.iters,
        "seed": seed,
        "wall_seconds": wall_seconds,
        "tokens_per_s": train_config.iters * train_config.tokens_per_step / wall_seconds
        if wall_seconds > 0
        else None,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "n_params": sum(p.numel() for p in model.parameters()),
        "chain": chain.to_dict(),
        "references": refs,
        "verdict_rule": VerdictRule().to_dict(),
    }
    for key in ("p_hat", "q_hat", "kernel_hat"):
        if key in last:
            out[key] = last[key]
    if "p" in refs:
        out["p"], out["q"], out["pi_1"] = refs["p"], refs["q"], refs["pi_1"]
    return out


def _stack_optimizer_state(
    opt: torch.optim.Optimizer, names: list[str], keep: Tensor | None = None
) -> tuple[dict[str, Tensor], list[dict]]:
    """trainer._optimizer_state of a stacked optimiser, restricted to members `keep`."""
    tensors, groups = _optimizer_state(opt, names)
    if keep is not None:
        tensors = {k: (v[keep].clone() if v.ndim > 0 else v.clone()) for k, v in tensors.items()}
    return tensors, groups


class _MemberOptimizer:
    """A view of member `index` of a stacked optimiser with the ``state_dict()`` of the
    member's own AdamW (what trainer._optimizer_state reads to write a checkpoint)."""

    def __init__(self, opt: torch.optim.Optimizer, index: int):
        self.opt, self.index = opt, index

    def state_dict(self) -> dict[str, Any]:
        sd = self.opt.state_dict()
        state = {
            idx: {k: (v[self.index].clone() if v.ndim > 0 else v.clone()) for k, v in s.items()}
            for idx, s in sd["state"].items()
        }
        return {"state": state, "param_groups": sd["param_groups"]}


# ---------------------------------------------------------------------------- training


@dataclass
class _State:
    """Where one member starts: fresh, or from a resume checkpoint."""

    step: int = 0
    checkpoint: Any = None
    metrics: list | None = None
    train_loss_sum: float = 0.0
    train_loss_count: int = 0
    wall_before: float = 0.0


def _initial_model(member: Member, device: torch.device) -> MarkovTransformer:
    """The trainer's initial model for this member (same seed stream and init)."""
    cfg = ModelConfig.from_dict(member.model_config.to_dict())
    model = MarkovTransformer(cfg, seed=derive_seed(member.seed, STREAM_INIT))
    chain = member.chain
    pi = (
        torch.full((chain.n_states,), 1.0 / chain.n_states, dtype=torch.float64)
        if isinstance(chain, InContextChain)
        else stationary_marginal(chain)
    )
    apply_init(model, cfg.init, pi=pi)
    return model.to(device)


def train_ensemble(
    members: Sequence[Member | RunConfig | tuple],
    train_config: TrainConfig | None = None,
    out_dirs: Sequence[str | os.PathLike] | None = None,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    stop_at: int | None = None,
    timings: dict[str, float] | None = None,
) -> list[TrainResult]:
    """Train `members` (same architecture, different seeds/chains/inits) together, each as
    ``trainer.train(model_config, chain, train_config, seed, out_dir)`` would.

    members: Member, RunConfig (its train section must equal train_config, which defaults to
    it) or (model_config, chain, seed). out_dirs: one run directory per member (None: in
    memory); resume/force/stop_at as in trainer.train (a finished member is only read;
    members resumed from different steps are trained as separate ensembles).
    timings: if given, filled with seconds spent on data, steps (forward, backward, AdamW),
    evaluation and checkpoints, and the number of ensemble steps.

    Returns one TrainResult per member, in order. A member whose loss turns NaN/inf gets the
    trainer's "diverged" summary (written to its run directory) and drops out; the others
    go on. ValueError for members of different architectures or mismatched configs.
    """
    if not members:
        raise ValueError("train_ensemble needs at least one member")
    parsed = [as_member(item, i) for i, item in enumerate(members)]
    given = [tc for _, tc in parsed if tc is not None]
    if train_config is None:
        train_config = given[0] if given else TrainConfig()
    if not isinstance(train_config, TrainConfig):
        raise ValueError(f"train_config must be a TrainConfig, got {type(train_config).__name__}")
    for i, tc in enumerate(given):
        if train_key(tc) != train_key(train_config):
            raise ValueError(
                f"ensemble member {i} has its own train config that differs from the shared "
                "one; members of an ensemble share one TrainConfig"
            )
    mem = []
    for i, (m, _) in enumerate(parsed):
        chain = chain_from_dict(m.chain) if isinstance(m.chain, dict) else m.chain
        if not isinstance(m.model_config, ModelConfig):
            raise ValueError(
                f"member {i}: model_config must be a ModelConfig, got "
                f"{type(m.model_config).__name__}"
            )
        if m.model_config.n_ctx < train_config.seq_len:
            raise ValueError(
                f"member {i}: model n_ctx={m.model_config.n_ctx} is shorter than "
                f"seq_len={train_config.seq_len}"
            )
        if m.model_config.d_vocab != chain.n_states:
            raise ValueError(
                f"member {i}: model d_vocab={m.model_config.d_vocab} but the chain has "
                f"{chain.n_states} states"
            )
        if isinstance(m.seed, bool) or not isinstance(m.seed, int) or m.seed < 0:
            raise ValueError(f"member {i}: seed must be an integer >= 0, got {m.seed!r}")
        mem.append(Member(m.model_config, chain, m.seed))
    check_same_architecture([m.model_config for m in mem])
    if stop_at is not None and not (0 <= stop_at <= train_config.iters):
        raise ValueError(f"stop_at must be in 0..{train_config.iters}, got {stop_at!r}")
    dirs: list[Path | None] = [None] * len(mem)
    if out_dirs is not None:
        if len(out_dirs) != len(mem):
            raise ValueError(f"{len(mem)} members but {len(out_dirs)} out_dirs")
        dirs = [Path(d) if d is not None else None for d in out_dirs]
        named = [str(d.resolve()) for d in dirs if d is not None]
        if len(set(named)) != len(named):
            raise ValueError("two ensemble members were given the same out_dir")
    for d in dirs:
        if d is not None and d.exists() and not d.is_dir():
            raise ValueError(f"out_dir {d} is a file; a run directory must be a directory")
    with contextlib.ExitStack() as held:  # one process per run directory at a time
        for d in dirs:
            if d is not None:
                held.enter_context(lock_directory(d, purpose="training run"))
        return _train_locked(mem, dirs, train_config, resume, force, progress, stop_at, timings)


def _train_locked(
    mem: list[Member],
    dirs: list[Path | None],
    train_config: TrainConfig,
    resume: bool,
    force: bool,
    progress: bool,
    stop_at: int | None,
    timings: dict[str, float] | None,
) -> list[TrainResult]:
    """train_ensemble once its inputs are checked and its run directories locked."""
    device = resolve_device(train_config.device)

    results: list[TrainResult | None] = [None] * len(mem)
    starts: dict[int, _State] = {}
    for i, (m, run_dir) in enumerate(zip(mem, dirs, strict=True)):
        state = _State()
        if run_dir is not None:
            config = _config_dict(m.model_config, m.chain, train_config, m.seed)
            if _prepare_run_dir(run_dir, config, resume, force):
                from training.runs import load_run

                run = load_run(run_dir)
                model = run.model(device=device) if run.checkpoint_steps() else None
                results[i] = TrainResult(run.summary(), model, run.metrics(), run_dir)
                continue
            _clean_partial_saves(run_dir)
            ckpt = find_resume_checkpoint(run_dir, m.model_config) if resume else None
            if ckpt is not None and ckpt.step > 0:
                meta = ckpt.metadata["resume"]
                state = _State(
                    step=ckpt.step,
                    checkpoint=ckpt,
                    metrics=_truncate_metrics(run_dir / METRICS, ckpt.step),
                    train_loss_sum=meta["train_loss_sum"],
                    train_loss_count=meta["train_loss_count"],
                    wall_before=meta["wall_seconds"],
                )
            elif (run_dir / METRICS).exists():
                # no update checkpointed yet: start again from step 0 (the same weights and
                # step-0 record), so that all fresh members can share one ensemble
                (run_dir / METRICS).unlink()
        starts[i] = state
    by_step: dict[int, list[int]] = {}
    for i, state in starts.items():
        by_step.setdefault(state.step, []).append(i)
    for step in sorted(by_step):
        idx = by_step[step]
        group = _Run(
            [mem[i] for i in idx],
            [dirs[i] for i in idx],
            [starts[i] for i in idx],
            train_config,
            device,
            timings,
        )
        for i, result in zip(idx, group.run(progress, stop_at), strict=True):
            results[i] = result
    return results  # type: ignore[return-value]


class _Run:
    """The training loop of one ensemble whose members all start at the same step."""

    def __init__(
        self,
        members: list[Member],
        dirs: list[Path | None],
        starts: list[_State],
        train_config: TrainConfig,
        device: torch.device,
        timings: dict[str, float] | None,
    ):
        self.members, self.dirs, self.tc, self.device = members, dirs, train_config, device
        self.timings = timings
        self.step = starts[0].step
        ref_cache: dict[str, dict] = {}
        self.refs = []
        for m in members:
            key = json.dumps(m.chain.to_dict(), sort_keys=True)
            if key not in ref_cache:
                ref_cache[key] = run_references(m.chain, train_config)
            self.refs.append(ref_cache[key])
        self.models = [_initial_model(m, device) for m in members]
        for model, state in zip(self.models, starts, strict=True):
            if state.checkpoint is not None:
                model.load_state_dict(state.checkpoint.weights)
        self.weights = StackedWeights.from_models(self.models)
        self.base = self.models[0]  # the module that computes every member (stacked_logits)
        self.base.set_fused_attention(train_config.fused_attention)
        self.opt, self.opt_names = make_optimizer(self.weights, train_config)
        if starts[0].checkpoint is not None:
            tensors: dict[str, Tensor] = {}
            for key in starts[0].checkpoint.state:
                if key.startswith("optim/"):
                    parts = [s.checkpoint.state[key] for s in starts]
                    tensors[key] = torch.stack(parts) if parts[0].ndim > 0 else parts[0]
            meta = starts[0].checkpoint.metadata["resume"]
            _load_optimizer_state(self.opt, self.opt_names, tensors, meta["param_groups"])
        self.eval_sets = [EvalSet(m.chain, train_config, m.seed, device) for m in members]
        self.metrics = [list(s.metrics or []) for s in starts]
        self.loss_sum = [s.train_loss_sum for s in starts]
        self.loss_count = [s.train_loss_count for s in starts]
        self.wall_before = [s.wall_before for s in starts]
        self.active = list(range(len(members)))  # member index of each stacked row
        self.results: list[TrainResult | None] = [None] * len(members)
        self.autocast_enabled = train_config.precision == "bf16"

    # --- helpers ---------------------------------------------------------------------
    def autocast(self):
        if not self.autocast_enabled:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def _tick(self, key: str, since: float) -> float:
        now = time.perf_counter()
        if self.timings is not None:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
                now = time.perf_counter()
            self.timings[key] = self.timings.get(key, 0.0) + now - since
        return now

    def _description(self) -> str:
        if len(self.members) > 1:
            return f"ensemble x{len(self.members)}"
        return self.dirs[0].name if self.dirs[0] is not None else "train"

    def wall(self, i: int) -> float:
        return self.wall_before[i] + time.perf_counter() - self.t_start

    def forward(self, tokens: Int[Tensor, "member batch pos"]) -> Tensor:
        with self.autocast():
            return stacked_logits(self.base, self.weights.params, tokens)

    # --- evaluation, checkpoints ---------------------------------------------------------
    @torch.no_grad()
    def record_eval(self) -> None:
        rows = self.active
        logits = [
            self.forward(torch.stack([self.eval_sets[i].tokens[b] for i in rows]))
            for b in range(self.tc.eval_batches)
        ]
        now = time.perf_counter()
        for r, i in enumerate(rows):
            es = self.eval_sets[i]
            model = _PrecomputedLogits(es.tokens, [lg[r] for lg in logits])
            rec = {"step": self.step} | evaluate(model, es, self.refs[i], self.autocast)
            count = self.loss_count[i]
            rec["train_loss"] = self.loss_sum[i] / count if count else None
            rec["lr"] = self.last_lr
            rec["tokens_seen"] = self.step * self.tc.tokens_per_step
            rec["wall_seconds"] = self.wall(i)
            dt = now - self.t_last
            done = (self.step - self.step_last) * self.tc.tokens_per_step
            rec["tokens_per_s"] = done / dt if dt > 0 else None
            self.loss_sum[i], self.loss_count[i] = 0.0, 0
            self.metrics[i].append(rec)
            if self.dirs[i] is not None:
                with open(self.dirs[i] / METRICS, "a") as f:
                    f.write(json.dumps(rec) + "\n")
        self.t_last, self.step_last = time.perf_counter(), self.step

    def save(self, name: str) -> None:
        for r, i in enumerate(self.active):
            if self.dirs[i] is None:
                continue
            member = self.members[i]
            tensors, groups = _optimizer_state(_MemberOptimizer(self.opt, r), self.opt_names)
            meta = {
                "run_format": RUN_FORMAT,
                "step": self.step,
                "seed": member.seed,
                "chain": member.chain.to_dict(),
                "train": self.tc.to_dict(),
                "resume": {
                    "param_groups": groups,
                    "lr_schedule": "TrainConfig.lr_at(step), a function of the step",
                    "param_names": self.opt_names,
                    "train_loss_sum": self.loss_sum[i],
                    "train_loss_count": self.loss_count[i],
                    "wall_seconds": self.wall(i),
                    "data_seeds": "SeedSequence([seed, 1, step]) per training batch",
                },
            }
            model = self.weights.copy_to(r, self.models[i])
            path = self.dirs[i] / CHECKPOINTS / name
            save_checkpoint(path, model, metadata=meta, state=tensors, overwrite=True)

    # --- members that diverge ------------------------------------------------------------
    def drop(self, rows: list[int], values: list[float]) -> None:
        """Members at stacked `rows` got a non-finite loss: give them the trainer's diverged
        summary (their weights are those before this update) and remove them."""
        for r in rows:
            i = self.active[r]
            model = self.weights.copy_to(r, self.models[i]).eval()
            try:
                _diverged(
                    self.dirs[i],
                    self.step,
                    values[r],
                    self.last_lr,
                    self.metrics[i],
                    self.refs[i],
                    self.members[i].seed,
                    self.wall(i),
                )
            except TrainingDiverged as err:
                summary = {
                    "status": "diverged",
                    "message": str(err),
                    "verdict": "neither",
                    "steps": self.step,
                    "seed": self.members[i].seed,
                }
                if self.dirs[i] is not None:
                    summary = json.loads((self.dirs[i] / SUMMARY).read_text())
                self.results[i] = TrainResult(summary, model, self.metrics[i], self.dirs[i])
        keep = [r for r in range(len(self.active)) if r not in rows]
        self.active = [self.active[r] for r in keep]
        if not keep:
            return
        index = torch.tensor(keep, device=self.device)
        tensors, groups = _stack_optimizer_state(self.opt, self.opt_names, index)
        params = {
            n: torch.nn.Parameter(p.detach()[index].clone()) for n, p in self.weights.params.items()
        }
        self.weights = StackedWeights(self.weights.cfg, params)
        self.opt, _ = make_optimizer(self.weights, self.tc)
        _load_optimizer_state(self.opt, self.opt_names, tensors, groups)

    # --- the loop ------------------------------------------------------------------------
    def run(self, progress: bool, stop_at: int | None) -> list[TrainResult]:
        from tqdm.auto import tqdm

        tc = self.tc
        checkpoint_steps = set(tc.checkpoint_steps())
        self.t_start = self.t_last = time.perf_counter()
        self.step_last = self.step
        self.last_lr = tc.lr_at(0)
        bar = tqdm(
            total=tc.iters,
            initial=self.step,
            disable=None if progress else True,
            desc=self._description(),
            dynamic_ncols=True,
        )
        with contextlib.closing(bar):
            if self.step == 0 and not self.metrics[0]:
                t = time.perf_counter()
                self.record_eval()
                t = self._tick("eval_s", t)
                if 0 in checkpoint_steps:
                    self.save(step_dir_name(0))
                    self._tick("save_s", t)
            while self.step < tc.iters and self.active:
                if stop_at is not None and self.step >= stop_at:
                    break
                t = time.perf_counter()
                seeds = [self.members[i].seed for i in self.active]
                chains = [self.members[i].chain for i in self.active]
                tokens = member_batches(chains, seeds, self.step, tc, self.device)
                t = self._tick("data_s", t)
                self.last_lr = tc.lr_at(self.step)
                for group in self.opt.param_groups:
                    group["lr"] = self.last_lr
                values = _train_step(self, tokens)
                t = self._tick("step_s", t)
                if self.timings is not None:
                    self.timings["steps"] = self.timings.get("steps", 0) + 1
                if not self.active:
                    break
                self.step += 1
                for i, v in zip(self.active, values, strict=True):
                    self.loss_sum[i] += v
                    self.loss_count[i] += 1
                bar.update(1)
                if self.step % tc.eval_every == 0 or self.step == tc.iters:
                    self.record_eval()
                    losses = [self.metrics[i][-1]["eval_loss"] for i in self.active]
                    bar.set_postfix(mean_loss=f"{sum(losses) / len(losses):.4f}", refresh=False)
                    t = self._tick("eval_s", t)
                if self.step in checkpoint_steps:
                    self.save(step_dir_name(self.step))
                    self._tick("save_s", t)
                elif tc.save_every and self.step % tc.save_every == 0:
                    self.save(LATEST)
                    self._tick("save_s", t)
        return self.finish()

    def finish(self) -> list[TrainResult]:
        tc = self.tc
        paused = self.step < tc.iters
        if paused and self.step not in set(tc.checkpoint_steps()):
            self.save(LATEST)
        for r, i in enumerate(self.active):
            model = self.weights.copy_to(r, self.models[i]).eval()
            member, run_dir = self.members[i], self.dirs[i]
            if paused:
                summary = {
                    "status": "paused",
                    "steps": self.step,
                    "seed": member.seed,
                    "wall_seconds": self.wall(i),
                }
                self.results[i] = TrainResult(summary, model, self.metrics[i], run_dir)
                continue
            refs = self.refs[i]
            gap = refs["unigram_loss"] - refs["optimal_loss"]
            summary = _summary(
                self.metrics[i],
                refs,
                gap,
                member.chain,
                tc,
                member.seed,
                self.wall(i),
                self.device,
                model,
            )
            if len(self.members) > 1:
                summary["ensemble_members"] = len(self.members)
            if run_dir is not None:
                write_json_atomic(run_dir / SUMMARY, summary)
                shutil.rmtree(run_dir / CHECKPOINTS / LATEST, ignore_errors=True)
                shutil.rmtree(run_dir / CHECKPOINTS / f".{LATEST}.old", ignore_errors=True)
            self.results[i] = TrainResult(summary, model, self.metrics[i], run_dir)
        return self.results  # type: ignore[return-value]


def member_batches(
    chains: Sequence[MarkovChain],
    seeds: Sequence[int],
    step: int,
    train_config: TrainConfig,
    device: torch.device,
) -> Int[Tensor, "member batch seq_len"]:
    """The trainer's training batch of update `step` for every member (stream 1)."""
    gens = [make_generator(device, derive_seed(s, STREAM_TRAIN, step)) for s in seeds]
    return sample_members(chains, gens, train_config.batch, train_config.seq_len, device)


class _PrecomputedLogits:
    """Stands in for a model in trainer.evaluate: returns the member's logits, computed in
    the batched forward, for each of its evaluation batches."""

    training = False

    def __init__(self, tokens: list[Tensor], logits: list[Tensor]):
        self._logits = {id(t): lg for t, lg in zip(tokens, logits, strict=True)}

    def eval(self) -> _PrecomputedLogits:
        return self

    def train(self, mode: bool = True) -> _PrecomputedLogits:
        return self

    def __call__(self, tokens: Tensor) -> Tensor:
        return self._logits[id(tokens)]
