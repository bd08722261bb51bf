"""Linear probes fitted with torch: closed-form ridge (penalty by cross-validation) for
continuous targets, multinomial logistic regression (L2, Newton's method) for discrete ones.

Splits are by *sequence*, never by position: positions of one sequence share a history and
are correlated, so a position split would leak. ``split_by_sequence`` / ``kfold_by_sequence``
return sequence ids, and the inner cross-validation of the ridge penalty also holds out whole
sequences (``groups``).

Features are standardised with the training set's mean and standard deviation (a feature
that is constant on the training set is centred and left unscaled), so penalties are on a
common scale. The intercept is never penalised.

R^2 is measured against the *training* mean: R^2 = 1 - sum (y - yhat)^2 / sum (y - ybar_train)^2,
pooled over outputs (variance weighted). A probe that always predicts the training mean
scores exactly 0 (the honest "no information" point); below 0 is worse than that. With a
constant target (sum of squares 0) R^2 is undefined and returned as nan.

Everything is fitted in float64 on ``device`` (CUDA when available by default).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from jaxtyping import Float, Int
from torch import Tensor

from training.devices import resolve_device

DEFAULT_ALPHAS = tuple(10.0**e for e in torch.arange(-6.0, 3.01, 0.5).tolist())
DEFAULT_L2 = 1e-3


# --------------------------------------------------------------------------------- splits


@dataclass(frozen=True)
class Split:
    """Sequence ids of a train/test split (disjoint)."""

    train: Int[Tensor, " n_train"]
    test: Int[Tensor, " n_test"]


def split_by_sequence(
    n_seqs: int, test_fraction: float = 0.25, generator: torch.Generator | None = None
) -> Split:
    """A random split of sequence ids 0..n_seqs-1, round(test_fraction n_seqs) held out."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    n_test = round(test_fraction * n_seqs)
    if n_test < 1 or n_test > n_seqs - 1:
        raise ValueError(
            f"n_seqs={n_seqs} with test_fraction={test_fraction} leaves an empty train or test set"
        )
    perm = torch.randperm(n_seqs, generator=generator)
    return Split(train=perm[n_test:].sort().values, test=perm[:n_test].sort().values)


def kfold_by_sequence(
    n_seqs: int, folds: int, generator: torch.Generator | None = None
) -> list[Split]:
    """k disjoint test blocks of sequences covering 0..n_seqs-1 (sizes differ by at most 1)."""
    if not isinstance(folds, int) or folds < 2 or folds > n_seqs:
        raise ValueError(f"folds must be an integer in 2..n_seqs={n_seqs}, got {folds!r}")
    perm = torch.randperm(n_seqs, generator=generator)
    blocks = perm.tensor_split(folds)
    return [
        Split(
            train=torch.cat([b for j, b in enumerate(blocks) if j != i]).sort().values,
            test=blocks[i].sort().values,
        )
        for i in range(folds)
    ]


def rows_of(
    seq_ids: Int[Tensor, " n"], valid: Tensor
) -> tuple[Int[Tensor, " rows"], Int[Tensor, " rows"]]:
    """(sequence, position-index) pairs of the valid samples of the given sequences."""
    mask = valid[seq_ids]
    s, p = mask.nonzero(as_tuple=True)
    return seq_ids[s], p


# --------------------------------------------------------------------------- preprocessing


@dataclass
class Standardizer:
    """x -> (x - mean) / std with the training statistics (std 1 where a feature is constant)."""

    mean: Float[Tensor, " d"]
    std: Float[Tensor, " d"]

    @classmethod
    def fit(cls, X: Float[Tensor, "n d"]) -> Standardizer:
        mean = X.mean(0)
        std = X.std(0, correction=0)
        scale = std.max().clamp_min(1e-30)
        std = torch.where(std > 1e-6 * scale, std, torch.ones_like(std))
        return cls(mean, std)

    def __call__(self, X: Float[Tensor, "n d"]) -> Float[Tensor, "n d"]:
        return (X - self.mean) / self.std


def r2_score(
    y: Float[Tensor, "n k"], pred: Float[Tensor, "n k"], reference: Float[Tensor, " k"]
) -> float:
    """1 - SSE / SS around ``reference`` (the training mean), pooled over outputs; nan if SS=0."""
    ss = ((y - reference) ** 2).sum()
    if ss <= 1e-12 * max(1.0, float((y**2).sum())):
        return math.nan
    return float(1 - ((y - pred) ** 2).sum() / ss)


# ---------------------------------------------------------------------------------- ridge


@dataclass
class RidgeProbe:
    """y ~ standardise(x) @ weight + bias, weight [d, k]; alpha is the chosen penalty per
    sample (loss mean ||y - yhat||^2 + alpha ||w||^2), cv_mse the inner-CV error per alpha."""

    weight: Float[Tensor, "d k"]
    bias: Float[Tensor, " k"]
    alpha: float
    scaler: Standardizer
    alphas: list[float] = field(default_factory=list)
    cv_mse: list[float] = field(default_factory=list)

    def predict(self, X: Float[Tensor, "n d"]) -> Float[Tensor, "n k"]:
        X = X.to(self.weight)
        return self.scaler(X) @ self.weight + self.bias


def _ridge_solve(
    X: Float[Tensor, "n d"], y: Float[Tensor, "n k"], alphas: Tensor
) -> tuple[Float[Tensor, "a d k"], Float[Tensor, " k"], Float[Tensor, " d"]]:
    """Ridge weights for every alpha at once (eigendecomposition of the centred Gram matrix),
    with the intercept unpenalised. Returns weights [a, d, k], y mean, x mean."""
    n = X.shape[0]
    xm, ym = X.mean(0), y.mean(0)
    Xc, yc = X - xm, y - ym
    evals, evecs = torch.linalg.eigh(Xc.T @ Xc)
    proj = evecs.T @ (Xc.T @ yc)  # [d, k]
    inv = 1.0 / (evals.clamp_min(0)[None, :] + n * alphas[:, None])  # [a, d]
    W = torch.einsum("de,ae,ek->adk", evecs, inv, proj)
    return W, ym, xm


def fit_ridge(
    X: Float[Tensor, "n d"],
    y: Float[Tensor, "n k"] | Float[Tensor, " n"],
    groups: Int[Tensor, " n"] | None = None,
    *,
    alphas: tuple[float, ...] | list[float] = DEFAULT_ALPHAS,
    folds: int = 5,
    generator: torch.Generator | None = None,
    device: str | torch.device | None = None,
) -> RidgeProbe:
    """Closed-form ridge with the penalty chosen by ``folds``-fold CV over ``groups`` (sequence
    ids; rows of one group stay together). One alpha: no CV."""
    device = resolve_device(device)
    X = X.to(device, torch.float64)
    y = y.to(device, torch.float64)
    if y.ndim == 1:
        y = y[:, None]
    if X.ndim != 2 or y.shape[0] != X.shape[0]:
        raise ValueError(
            f"X must be [n, d] and y [n, k] with equal n, got {tuple(X.shape)}, {tuple(y.shape)}"
        )
    grid = torch.tensor(sorted(float(a) for a in alphas), dtype=torch.float64, device=device)
    if grid.numel() == 0 or (grid < 0).any():
        raise ValueError(f"alphas must be a non-empty list of penalties >= 0, got {list(alphas)}")
    scaler = Standardizer.fit(X)
    Z = scaler(X)
    cv_mse = torch.zeros(grid.numel(), dtype=torch.float64, device=device)
    if grid.numel() > 1:
        groups = torch.arange(X.shape[0]) if groups is None else torch.as_tensor(groups).cpu()
        uniq, inverse = groups.unique(return_inverse=True)
        if uniq.numel() < folds:
            raise ValueError(f"ridge CV needs at least folds={folds} groups, got {uniq.numel()}")
        for split in kfold_by_sequence(uniq.numel(), folds, generator):
            is_test = torch.zeros(uniq.numel(), dtype=torch.bool)
            is_test[split.test] = True
            test_rows = is_test[inverse].to(device)
            W, ym, xm = _ridge_solve(Z[~test_rows], y[~test_rows], grid)
            pred = torch.einsum("nd,adk->ank", Z[test_rows] - xm, W) + ym
            cv_mse += ((pred - y[test_rows]) ** 2).sum((1, 2))
        cv_mse /= y.numel()
    best = int(cv_mse.argmin())
    W, ym, xm = _ridge_solve(Z, y, grid[best : best + 1])
    weight = W[0]
    return RidgeProbe(
        weight=weight,
        bias=ym - xm @ weight,
        alpha=float(grid[best]),
        scaler=scaler,
        alphas=grid.tolist(),
        cv_mse=cv_mse.tolist() if grid.numel() > 1 else [math.nan],
    )


# ------------------------------------------------------------------------------- logistic


@dataclass
class LogisticProbe:
    """Multinomial logistic regression: logits = standardise(x) @ weight + bias, weight [d, C];
    fitted by minimising mean cross-entropy (nats) + l2/2 ||weight||^2."""

    weight: Float[Tensor, "d C"]
    bias: Float[Tensor, " C"]
    l2: float
    scaler: Standardizer
    train_loss: float = math.nan

    def logits(self, X: Float[Tensor, "n d"]) -> Float[Tensor, "n C"]:
        return self.scaler(X.to(self.weight)) @ self.weight + self.bias

    def predict(self, X: Float[Tensor, "n d"]) -> Int[Tensor, " n"]:
        return self.logits(X).argmax(-1)

    def loss(self, X: Float[Tensor, "n d"], y: Int[Tensor, " n"]) -> float:
        """Mean cross-entropy (nats) on (X, y)."""
        y = y.to(self.weight.device)
        return float(torch.nn.functional.cross_entropy(self.logits(X), y))


def _newton(objective, grad_hess, theta: Tensor, free: Tensor, max_iter: int, tol: float):
    """Minimise a smooth convex objective by Newton steps with Armijo backtracking.

    objective(theta) -> (loss, aux); grad_hess(theta, aux) -> (grad, Hessian) with grad shaped
    like theta and the Hessian over theta.flatten(). ``free`` marks unpenalised directions that
    may be exactly flat (a common bias shift): steps are projected off them (mean removed)."""
    loss, aux = objective(theta)
    for _ in range(max_iter):
        grad, H = grad_hess(theta, aux)
        if float(grad.abs().max()) < tol:
            break
        eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
        step = torch.linalg.solve(H + 1e-12 * eye, grad.flatten()).reshape(theta.shape)
        if free is not None:
            step = step - step.mean(-1, keepdim=True) * free
        t = 1.0
        while True:
            new_loss, new_aux = objective(theta - t * step)
            if new_loss <= loss - 1e-4 * t * (grad * step).sum() or t < 1e-8:
                break
            t *= 0.5
        theta = theta - t * step
        improvement = float(loss - new_loss)
        loss, aux = new_loss, new_aux
        if improvement < tol * max(1.0, float(loss)):
            break
    return theta, float(loss)


def fit_logistic(
    X: Float[Tensor, "n d"],
    y: Int[Tensor, " n"],
    n_classes: int,
    *,
    l2: float = DEFAULT_L2,
    max_iter: int = 100,
    tol: float = 1e-10,
    device: str | torch.device | None = None,
) -> LogisticProbe:
    """Multinomial logistic regression, mean cross-entropy (nats) + l2/2 ||W||^2 on standardised
    features, by Newton's method with backtracking (float64, exact Hessian). Strictly convex
    in W for l2 > 0, so the optimum is unique; the biases are defined up to a common shift
    (steps stay orthogonal to it). Two classes are solved in the equivalent one-logit form:
    the symmetric optimum has W = [-w/2, w/2], and l2/2 (|w0|^2 + |w1|^2) = (l2/2)/2 |w|^2."""
    device = resolve_device(device)
    if not l2 > 0:
        raise ValueError(f"l2 must be > 0 (separable data has no unpenalised optimum), got {l2}")
    if n_classes < 2:
        raise ValueError(f"n_classes must be >= 2, got {n_classes}")
    X = X.to(device, torch.float64)
    y = torch.as_tensor(y).to(device).long()
    if X.ndim != 2 or y.shape != (X.shape[0],):
        raise ValueError(f"X must be [n, d] and y [n], got {tuple(X.shape)}, {tuple(y.shape)}")
    if y.numel() == 0:
        raise ValueError("no samples to fit")
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"labels must lie in 0..{n_classes - 1}")
    scaler = Standardizer.fit(X)
    n, d = X.shape
    C = n_classes
    Z1 = torch.cat([scaler(X), torch.ones(n, 1, dtype=X.dtype, device=device)], dim=1)
    Y = torch.nn.functional.one_hot(y, C).double()
    prior = (Y.sum(0) + 1.0) / (n + C)
    if C == 2:
        lam = l2 / 2
        pen = torch.full((d + 1,), lam, dtype=torch.float64, device=device)
        pen[d] = 0.0
        yf = Y[:, 1]

        def objective(theta):
            m = Z1 @ theta
            ce = (torch.nn.functional.softplus(m) - yf * m).mean()
            return ce + 0.5 * (pen * theta**2).sum(), m

        def grad_hess(theta, m):
            s = torch.sigmoid(m)
            grad = Z1.T @ (s - yf) / n + pen * theta
            H = (Z1.T * (s * (1 - s))) @ Z1 / n + torch.diag(pen)
            return grad, H

        theta0 = torch.zeros(d + 1, dtype=torch.float64, device=device)
        theta0[d] = (prior[1] / prior[0]).log()
        theta, loss = _newton(objective, grad_hess, theta0, None, max_iter, tol)
        half = torch.stack([-theta / 2, theta / 2], dim=-1)  # [d+1, 2]
        # the binary objective equals the symmetric one at this point (see the docstring)
        return LogisticProbe(half[:d].clone(), half[d].clone(), l2, scaler, train_loss=loss)

    pen = torch.full((d + 1, C), l2, dtype=torch.float64, device=device)
    pen[d] = 0.0

    def objective(theta):
        logits = Z1 @ theta
        ce = -(Y * logits.log_softmax(-1)).sum(-1).mean()
        return ce + 0.5 * (pen * theta**2).sum(), logits

    def grad_hess(theta, logits):
        p = logits.softmax(-1)
        grad = Z1.T @ (p - Y) / n + pen * theta
        # Hessian of the mean CE: (1/n) sum_i z_i z_i^T (x) (diag p_i - p_i p_i^T)
        A = (Z1[:, :, None] * p[:, None, :]).reshape(n, -1)  # [n, (a, c)] = z_a p_c
        D = (Z1.T @ A).reshape(d + 1, d + 1, C)  # sum_n z_a z_b p_c
        H = torch.diag_embed(D).permute(0, 2, 1, 3).reshape((d + 1) * C, (d + 1) * C)
        return grad, (H - A.T @ A) / n + torch.diag(pen.flatten())

    theta0 = torch.zeros(d + 1, C, dtype=torch.float64, device=device)
    theta0[d] = prior.log() - prior.log().mean()
    theta, loss = _newton(objective, grad_hess, theta0, (pen == 0).double(), max_iter, tol)
    return LogisticProbe(theta[:d].clone(), theta[d].clone(), l2, scaler, train_loss=loss)


def fit_logistic_cv(
    X: Float[Tensor, "n d"],
    y: Int[Tensor, " n"],
    n_classes: int,
    groups: Int[Tensor, " n"],
    *,
    l2s: tuple[float, ...] | list[float] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0),
    folds: int = 5,
    generator: torch.Generator | None = None,
    device: str | torch.device | None = None,
) -> tuple[LogisticProbe, list[float]]:
    """``fit_logistic`` with l2 chosen by ``folds``-fold CV over groups (held-out mean
    cross-entropy, nats); returns the refitted probe and the CV loss per l2."""
    if len(l2s) == 0:
        raise ValueError("l2s must list at least one penalty")
    groups = torch.as_tensor(groups).cpu()
    uniq, inverse = groups.unique(return_inverse=True)
    if len(l2s) == 1:
        return fit_logistic(X, y, n_classes, l2=l2s[0], device=device), [math.nan]
    if uniq.numel() < folds:
        raise ValueError(f"logistic CV needs at least folds={folds} groups, got {uniq.numel()}")
    y = torch.as_tensor(y).cpu()
    X = X.cpu()
    cv = []
    splits = kfold_by_sequence(uniq.numel(), folds, generator)
    for l2 in l2s:
        total = 0.0
        for split in splits:
            is_test = torch.zeros(uniq.numel(), dtype=torch.bool)
            is_test[split.test] = True
            rows = is_test[inverse]
            probe = fit_logistic(X[~rows], y[~rows], n_classes, l2=l2, device=device)
            total += probe.loss(X[rows], y[rows]) * int(rows.sum())
        cv.append(total / y.numel())
    best = min(range(len(l2s)), key=cv.__getitem__)
    return fit_logistic(X, y, n_classes, l2=l2s[best], device=device), cv


# ------------------------------------------------------------------------------ evaluation


@dataclass
class ProbeScore:
    """Held-out score of one probe family on one (activation, target) pair, averaged over the
    splits. score: R^2 (continuous, against the training mean) or accuracy (discrete);
    chance: accuracy of always predicting the training majority class (discrete) or 0
    (continuous: the training mean); loss: test MSE or cross-entropy (nats); penalty: the
    ridge alpha or logistic l2 (median over splits)."""

    kind: str
    score: float
    score_std: float
    train_score: float
    chance: float
    loss: float
    penalty: float
    n_train: int
    n_test: int


def _flat(values: Tensor, seqs: Tensor, pos: Tensor) -> Tensor:
    return values[seqs, pos]


def score_probe(
    X: Float[Tensor, "seq n_pos d"],
    target,
    splits: list[Split],
    *,
    alphas: tuple[float, ...] | list[float] = DEFAULT_ALPHAS,
    l2s: tuple[float, ...] | list[float] = (DEFAULT_L2,),
    cv_folds: int = 5,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> ProbeScore:
    """Fit on each split's training sequences, score on its test sequences (valid samples
    only): ridge for continuous ``target``s, logistic for discrete ones."""
    if X.shape[:2] != target.valid.shape:
        raise ValueError(
            f"activations {tuple(X.shape[:2])} and target {tuple(target.valid.shape)} differ in "
            "[seq, n_pos]"
        )
    scores, train_scores, chances, losses, penalties = [], [], [], [], []
    n_train = n_test = 0
    for i, split in enumerate(splits):
        gen = torch.Generator().manual_seed(seed + i)
        tr_s, tr_p = rows_of(split.train, target.valid)
        te_s, te_p = rows_of(split.test, target.valid)
        if tr_s.numel() == 0 or te_s.numel() == 0:
            raise ValueError(f"target {target.name!r} has no valid samples in a train or test set")
        Xtr, Xte = _flat(X, tr_s, tr_p), _flat(X, te_s, te_p)
        ytr, yte = _flat(target.values, tr_s, tr_p), _flat(target.values, te_s, te_p)
        n_train, n_test = n_train + tr_s.numel(), n_test + te_s.numel()
        if target.kind == "continuous":
            probe = fit_ridge(
                Xtr, ytr, tr_s, alphas=alphas, folds=cv_folds, generator=gen, device=device
            )
            ytr64 = ytr.to(probe.weight).reshape(ytr.shape[0], -1)
            yte64 = yte.to(probe.weight).reshape(yte.shape[0], -1)
            ref = ytr64.mean(0)
            pred = probe.predict(Xte)
            scores.append(r2_score(yte64, pred, ref))
            train_scores.append(r2_score(ytr64, probe.predict(Xtr), ref))
            chances.append(0.0)
            losses.append(float(((yte64 - pred) ** 2).mean()))
            penalties.append(probe.alpha)
        else:
            probe, _ = fit_logistic_cv(
                Xtr,
                ytr,
                target.n_classes,
                tr_s,
                l2s=l2s,
                folds=cv_folds,
                generator=gen,
                device=device,
            )
            yte_d = yte.to(probe.weight.device)
            scores.append(float((probe.predict(Xte) == yte_d).double().mean()))
            train_scores.append(float((probe.predict(Xtr) == ytr.to(yte_d.device)).double().mean()))
            majority = torch.bincount(ytr, minlength=target.n_classes).argmax()
            chances.append(float((yte == majority).double().mean()))
            losses.append(probe.loss(Xte, yte))
            penalties.append(probe.l2)
    t = torch.tensor(scores, dtype=torch.float64)
    return ProbeScore(
        kind=target.kind,
        score=float(t.mean()),
        score_std=float(t.std(correction=0)) if len(scores) > 1 else 0.0,
        train_score=float(torch.tensor(train_scores).mean()),
        chance=float(torch.tensor(chances).mean()),
        loss=float(torch.tensor(losses).mean()),
        penalty=float(torch.tensor(penalties).median()),
        n_train=n_train // len(splits),
        n_test=n_test // len(splits),
    )
