"""What a run is judged against and how: the reference losses of the verdict
(run_references), the fixed held-out batches (EvalSet) and their metrics (evaluate, with
information and context_information).

Metrics (one JSON object per evaluation in metrics.jsonl; losses in nats, positions 0..N-2
of every held-out sequence): step, eval_loss, gap_entropy = eval_loss - L*, gap_unigram =
eval_loss - L_u, kl = mean KL(true next-token law || model) (chain.next_token_probs: the
kernel row, or the in-context Bayes predictive), kl_unigram = mean KL(unigram predictor ||
model), rel_excess, rel_unigram, dependence (training.verdicts), accuracy (argmax = next
token), p_hat = mean predicted P(1 | x_n = 0) and q_hat = mean predicted P(0 | x_n = 1)
(binary first-order chains; kernel_hat for other small fixed kernels); evaluate computes
these. The training loop adds train_loss (mean training loss since the previous
evaluation), lr (of the update that produced this step; step 0: the first update's),
tokens_seen, wall_seconds and tokens_per_s (since the previous evaluation).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from training.chains import InContextChain, MarkovChain, add_pseudocount_probs
from training.model import MarkovTransformer
from training.recipe import TrainConfig
from training.references import in_context_references, reference_losses, stationary_marginal
from training.trainer.streams import STREAM_EVAL, derive_seed, make_generator
from training.verdicts import relative

IN_CONTEXT_REFERENCE_TOKENS = 1 << 20  # Monte Carlo tokens for in-context reference losses


def run_references(chain: MarkovChain, train_config: TrainConfig) -> dict[str, Any]:
    """The two reference losses of the verdict (nats): optimal_loss L* and unigram_loss L_u.

    Fixed chains: exact (entropy rate, H(pi), plus references.reference_losses). In-context
    chains: references.in_context_references at the training length (Monte Carlo, about 2^20
    tokens, seed 0): L* = the add-alpha loss (optimal_label says whether it is Bayes), L_u =
    the in-context unigram loss, the uniform and oracle losses, and order_losses (add-alpha
    order j = 0..k) for the order labels.
    """
    if isinstance(chain, InContextChain):
        n_seq = max(64, IN_CONTEXT_REFERENCE_TOKENS // train_config.seq_len)
        ic = in_context_references(chain, length=train_config.seq_len, n_sequences=n_seq, seed=0)
        losses = ic["losses"]
        return {
            "kind": "in_context",
            "optimal_loss": losses["add_alpha"],
            "unigram_loss": losses["in_context_unigram"],
            "uniform_loss": losses["uniform"],
            "oracle_loss": losses["oracle"],
            "monte_carlo_se": ic["se"]["add_alpha"],
            "optimal_label": ic["labels"]["add_alpha"],
            "add_alpha_is_bayes": ic["add_alpha_is_bayes"],
            "in_context_references": losses,
            "order_losses": ic["order_losses"],
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
        # in-context chains: a kernel per held-out sequence, whatever the training group size
        # (each sequence's law is the same; a kernel per batch would judge on a few kernels)
        source = chain.per_sequence() if self.in_context else chain
        self.tokens: list[Int[Tensor, "batch pos"]] = []
        self.true: list[Float[Tensor, "batch pos_m1 S"]] = []
        self.unigram: list[Float[Tensor, "batch pos_m1 S"]] = []
        self.context: list[Int[Tensor, "batch npos"]] = []
        pi = None if self.in_context else stationary_marginal(chain).to(device)
        for _ in range(train_config.eval_batches):
            tokens = source.sample(train_config.batch, train_config.seq_len, generator=gen)
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


class PrecomputedLogits:
    """Stands in for a model in evaluate: returns the member's logits, computed in
    the batched forward, for each of its evaluation batches."""

    training = False

    def __init__(self, tokens: list[Tensor], logits: list[Tensor]):
        self._logits = {id(t): lg for t, lg in zip(tokens, logits, strict=True)}

    def eval(self) -> PrecomputedLogits:
        return self

    def train(self, mode: bool = True) -> PrecomputedLogits:
        return self

    def __call__(self, tokens: Tensor) -> Tensor:
        return self._logits[id(tokens)]
