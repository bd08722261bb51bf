"""Markov sources: binary, k-th order and in-context chains, with a vectorised sampler.

Conventions (used by every module that touches tokens):

- Tokens are integers 0..S-1. A sequence x_1..x_N is ``tokens[:, 0..N-1]``.
- A k-th order kernel K has shape ``[S]*k + [S]``: ``K[a_1, ..., a_k, :]`` is the law of
  x_{n+1} given (x_{n-k+1}, ..., x_n) = (a_1, ..., a_k), oldest token first.
- The lifted chain runs on k-tuples, indexed in base S with the newest token as the last
  digit: z = sum_j a_j S^(k-j), and a step is z -> (z S mod S^k) + x_{n+1}.
- ``next_token_probs(tokens)[:, i]`` is the law of ``tokens[:, i+1]`` given
  ``tokens[:, :i+1]``: exactly what a causal model's output at position i should be.
- Exact quantities (kernels, laws, probabilities) are float64.

Sampling draws one uniform u per position. At position n the step maps every lifted
state z to its successor through the inverse CDF, x_{n+1} = #{s < S-1 : cumK[z, s] <= u_n}.
These maps are composed with a work-efficient parallel scan (2 log2 N rounds of gathers),
so no Python loop runs over positions. ``sample_reference_loop`` uses the same uniforms and
the same inverse-CDF rule one position at a time, hence returns identical tokens.

One module per idea; each imports only modules listed before it (never this package's
re-exports), so there are no import cycles. Seeds are checked by ``training.seeds``.

- ``checks``: argument checks (check_prob, check_int, check_positive, check_size,
  check_init, check_tokens) and the kernel size cap MAX_KERNEL_ENTRIES, INITS;
- ``kernels``: kernel validation (validate_kernel), the lifted chain (lifted_matrix,
  tuple_index, tuple_digits), its closed class and exact stationary law (closed_class,
  stationary_law by GTH or a scaled solve, batched_stationary) and random kernels
  (dirichlet, random_permutations);
- ``sampling``: the randomness of one sample call (draw_randomness), the scan sampler
  (sample_scan) and its per-position reference (sample_reference_loop);
- ``estimates``: next-token laws from tokens (oracle_probs, add_pseudocount_probs) and
  transition_counts;
- ``families``: MarkovChain, BinaryChain, KthOrderChain, InContextChain;
- ``serialise``: chain_from_dict and FAMILIES.

Every public name is re-exported here.
"""

from training.chains.checks import (
    INITS,
    MAX_KERNEL_ENTRIES,
    check_init,
    check_int,
    check_positive,
    check_prob,
    check_size,
    check_tokens,
)
from training.chains.estimates import add_pseudocount_probs, oracle_probs, transition_counts
from training.chains.families import (
    MAX_IN_CONTEXT_STATIONARY,
    BinaryChain,
    InContextChain,
    KthOrderChain,
    MarkovChain,
)
from training.chains.kernels import (
    GTH_MAX_STATES,
    MAX_LIFTED_STATES,
    ROW_SUM_TOL,
    SCAN_BUDGET,
    batched_stationary,
    closed_class,
    dirichlet,
    lifted_matrix,
    random_permutations,
    stationary_law,
    tuple_digits,
    tuple_index,
    validate_kernel,
)
from training.chains.sampling import (
    SamplerSource,
    draw_randomness,
    sample_reference_loop,
    sample_scan,
)
from training.chains.serialise import FAMILIES, chain_from_dict

__all__ = [
    "FAMILIES",
    "GTH_MAX_STATES",
    "INITS",
    "MAX_IN_CONTEXT_STATIONARY",
    "MAX_KERNEL_ENTRIES",
    "MAX_LIFTED_STATES",
    "ROW_SUM_TOL",
    "SCAN_BUDGET",
    "BinaryChain",
    "InContextChain",
    "KthOrderChain",
    "MarkovChain",
    "SamplerSource",
    "add_pseudocount_probs",
    "batched_stationary",
    "chain_from_dict",
    "check_init",
    "check_int",
    "check_positive",
    "check_prob",
    "check_size",
    "check_tokens",
    "closed_class",
    "dirichlet",
    "draw_randomness",
    "lifted_matrix",
    "oracle_probs",
    "random_permutations",
    "sample_reference_loop",
    "sample_scan",
    "stationary_law",
    "transition_counts",
    "tuple_digits",
    "tuple_index",
    "validate_kernel",
]
