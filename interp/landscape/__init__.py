"""The loss landscape around a point: population loss, gradient, Hessian spectrum and verdict,
theta_pi and the paper's prediction for it.

The population loss is the expected next-token cross-entropy (nats) of sequences from a chain;
it is estimated on a large fixed sample, and its standard error comes from the per-sequence
mean losses, which are independent across sequences. All second-order quantities are computed
in float64 on a copy of the model.

The Hessian verdict (`hessian_report`) uses no magic threshold, only sampling error:

- Curvature of either sign is certified out of sample. The sequences are split into halves
  A and B; the k lowest (and k highest) eigenvectors v of the Hessian on A are scored on B by
  the per-sequence curvatures v^T H_i v, whose mean is an unbiased estimate of v^T H v
  (H: the population Hessian; lambda_min(H) <= v^T H v <= lambda_max(H) for a unit v) and
  whose standard error is their standard deviation / sqrt(n_B); the same with the halves
  swapped, and the two estimates averaged. A saddle needs a candidate below -z standard
  errors, confirmed positive curvature one above +z, with z = k_sigma corrected for the k
  candidates (Bonferroni): the false-alarm rate is that of one k_sigma test.
- "Flat" means within the sampling error of the Hessian itself: noise_norm estimates
  ||H_sample - H|| (spectral norm) as that of sum_i (eps_i - mean eps) / n H_i for random
  signs eps_i (the same covariance as the sampling error; Lanczos on Hessian-vector
  products), and by Weyl's inequality every sample eigenvalue is within that of the
  population one: the Weyl band flat_tol = flat_factor * noise_norm. That bound is set by the
  noisiest direction, usually a strongly curved one; the eigenvalues inside it (the cluster C)
  move by at most ||E_CC|| + ||E_perp,C||^2 / gap (the quadratic residual bound: E_CC the noise
  within C's eigenspace, E_perp,C its coupling to the rest, gap the distance to the other
  eigenvalues), each norm estimated on the same random-sign draws and scaled by flat_factor.
  With the exact Hessian the band is the smaller of the two (flat_band; 1.7-16x tighter than
  Weyl's on the tests' theta_pi models); with Lanczos it is the Weyl band. Eigenvalues with |lambda| <= flat_band are
  flat within error.

Verdicts: "saddle" (negative curvature confirmed out of sample); "local minimum" (every
eigenvalue above the flat band); "local minimum (up to flat directions)" (no negative
curvature beyond error, lambda_min within the flat band, positive curvature confirmed out of
sample: the second-order test cannot see past the flat directions); "degenerate (flat)" (no
curvature of either sign confirmed: the Hessian is zero within error); "inconclusive"
(lambda_min below the band but not confirmed out of sample, or Lanczos not converged: use more
sequences or iterations).

theta_pi (docs/theory.md sections 1 and 4): `training.inits.init_theta_pi` with pi the chain's
stationary marginal. Its loss is the unigram loss H(pi) and its gradient vanishes in
expectation; on a finite sample only the unembedding bias and the (tied or untied) W_U get a
nonzero gradient, pi - (empirical next-token frequencies) times the final-LayerNorm output,
of order 1/sqrt(tokens). `hessian_proxy` is the paper code's proxy
lambda_min(2 (p + q - 1) I_d + Cov_n(p_n)) over the positional embeddings p_n.

One module per idea; each imports only modules listed before it (never this package's
re-exports), so there are no import cycles. The Hessian-vector products, Lanczos and the
parameter layout they use are in ``interp.hessian``.

- ``sample``: LandscapeConfig, the fixed sample (sample_tokens, analysis_copy) and the loss
  and gradient estimates on it (population_loss, population_gradient);
- ``spectrum``: HessianReport and hessian_report, the spectrum and its verdict (VERDICTS),
  flat_cluster_band;
- ``theta_pi``: theta_pi_of, theta_pi_model, hessian_proxy, paper_prediction, agreement and
  theta_pi_analysis;
- ``escape``: init_escape_study, how often training leaves the unigram basin per init;
  precision_escape (with training_gradient_norm and gradient_fidelity: how much of the
  float32 gradient an arithmetic keeps), the escape in fp32 vs fp16 from one init;
- ``grid``: theta_pi_grid over binary chains and architectures, grid_table_markdown;
- ``plots``: plot_spectrum, plot_grid, plot_precision_escape (and symlog_ticks).

Every public name is re-exported here.
"""

from interp.landscape.escape import (
    gradient_fidelity,
    init_escape_study,
    precision_escape,
    training_gradient_norm,
)
from interp.landscape.grid import grid_table_markdown, theta_pi_grid
from interp.landscape.plots import plot_grid, plot_precision_escape, plot_spectrum, symlog_ticks
from interp.landscape.sample import (
    DTYPES,
    METHODS,
    GradientEstimate,
    LandscapeConfig,
    LossEstimate,
    analysis_copy,
    default_device,
    per_sequence_loss,
    population_gradient,
    population_loss,
    sample_tokens,
)
from interp.landscape.spectrum import VERDICTS, HessianReport, flat_cluster_band, hessian_report
from interp.landscape.theta_pi import (
    agreement,
    hessian_proxy,
    paper_prediction,
    theta_pi_analysis,
    theta_pi_model,
    theta_pi_of,
)

__all__ = [
    "DTYPES",
    "METHODS",
    "VERDICTS",
    "GradientEstimate",
    "HessianReport",
    "flat_cluster_band",
    "LandscapeConfig",
    "LossEstimate",
    "agreement",
    "analysis_copy",
    "default_device",
    "grid_table_markdown",
    "hessian_proxy",
    "hessian_report",
    "init_escape_study",
    "precision_escape",
    "training_gradient_norm",
    "gradient_fidelity",
    "paper_prediction",
    "per_sequence_loss",
    "plot_grid",
    "plot_precision_escape",
    "plot_spectrum",
    "population_gradient",
    "population_loss",
    "sample_tokens",
    "symlog_ticks",
    "theta_pi_analysis",
    "theta_pi_grid",
    "theta_pi_model",
    "theta_pi_of",
]
