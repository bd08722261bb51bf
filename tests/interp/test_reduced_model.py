"""interp.reduced_model: the Local-to-Global two-parameter model (docs/theory.md section 4).

Claims checked: the optimal bias solves its stationarity equation; e = 0 is the unigram line
and the global-minimum curve (1 + 2w|w|) e^2 = log((1-p)(1-q)/(pq)) reaches the entropy rate;
gradients match autograd; the e-curvature on the unigram line is 2 pi0 pi1 (p+q-1)(1+2w|w|);
E = e^2 - w^2 - sign(w) log|w| is conserved along the gradient flow with b optimal (and
drifts at rate 2 e^2 dL/db when b flows); for p + q > 1 flows from near the origin with
w > -1/sqrt 2 end on the unigram line, those with w < -1/sqrt 2 at a global minimum.
"""

import math

import pytest
import torch

from interp.reduced_model import SADDLE_W, ReducedModel, plot_reduced_landscape
from training.chains import BinaryChain
from training.references import entropy_rate, unigram_loss

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("p,q", [(0.5, 0.8), (0.2, 0.3), (0.9, 0.6)])
def test_references_and_optimal_bias(p, q):
    m = ReducedModel(p, q)
    chain = BinaryChain(p, q)
    assert m.unigram_loss() == pytest.approx(unigram_loss(chain), abs=1e-12)
    assert m.entropy_rate() == pytest.approx(entropy_rate(chain), abs=1e-12)
    assert (m.s_star > 0) == (p + q < 1)
    s = torch.linspace(-30, 30, 61, dtype=torch.float64)
    c = m.optimal_offset(s)
    balance = m.pi0 * torch.sigmoid(c) + m.pi1 * torch.sigmoid(s + c) - m.pi1
    assert balance.abs().max() < 1e-12
    # b* minimises the loss: perturbing b in either direction increases it.
    e, w = torch.tensor([0.3, 1.2, 0.8]), torch.tensor([0.5, -1.4, -0.2])
    b = m.optimal_bias(e, w)
    for db in (-1e-3, 1e-3):
        assert (m.loss(e, w, b + db) > m.loss(e, w, b)).all()
    # e = 0 is the unigram line whatever w; the global-minimum curve reaches the entropy rate.
    w_line = torch.tensor([-1.5, -0.3, 0.4, 2.0])
    torch.testing.assert_close(
        m.reduced_loss(torch.zeros(4), w_line),
        torch.full((4,), m.unigram_loss(), dtype=torch.float64),
    )
    ws = torch.linspace(-2, 2, 41, dtype=torch.float64)
    e_star = m.global_min_e(ws)
    ok = ~e_star.isnan()
    assert ok.any() and (~ok).any()
    losses = m.reduced_loss(e_star[ok], ws[ok])
    assert (losses - m.entropy_rate()).abs().max() < 1e-10
    assert (m.slope(e_star[ok], ws[ok]) - m.s_star).abs().max() < 1e-10


def test_gradients_match_autograd(gen):
    m = ReducedModel(0.5, 0.8)
    for _ in range(5):
        e, w, b = (torch.randn(3, generator=gen, dtype=torch.float64)).tolist()
        theta = torch.tensor([e, w, b], dtype=torch.float64, requires_grad=True)
        (g,) = torch.autograd.grad(m.loss(theta[0], theta[1], theta[2]), theta)
        torch.testing.assert_close(torch.stack(m.gradient(e, w, b)), g)
        x = torch.tensor([e, w], dtype=torch.float64, requires_grad=True)
        (gr,) = torch.autograd.grad(m.reduced_loss(x[0], x[1]), x)
        torch.testing.assert_close(torch.stack(m.reduced_gradient(e, w)), gr)


@pytest.mark.parametrize("p,q", [(0.5, 0.8), (0.2, 0.3)])
def test_curvature_on_the_unigram_line(p, q):
    m = ReducedModel(p, q)
    b = math.log(m.pi1 / m.pi0)  # the optimal bias at e = 0
    for w in (-1.5, -0.5, 0.3, 1.1):
        H = m.analytic_hessian(0.0, w, b)
        k = 1 + 2 * w * abs(w)
        assert H[0, 0] == pytest.approx(2 * m.pi0 * m.pi1 * (p + q - 1) * k, abs=1e-12)
        assert H[2, 2] == pytest.approx(m.pi0 * m.pi1, abs=1e-12)
        assert H[1].abs().sum() == 0 and H[0, 2] == 0
    lo, hi = m.unigram_minima()
    if p + q > 1:
        assert (lo, hi) == (SADDLE_W, math.inf)
    else:
        assert (lo, hi) == (-math.inf, SADDLE_W)


def test_energy_is_conserved_along_the_flow_and_w_keeps_its_sign():
    m = ReducedModel(0.5, 0.8)
    gen = torch.Generator().manual_seed(0)
    e0 = torch.rand(40, generator=gen, dtype=torch.float64) * 1.5
    w0 = (torch.rand(40, generator=gen, dtype=torch.float64) - 0.5) * 3
    flow = m.flow(e0, w0, t_max=60.0, n_out=31)
    assert flow.states.shape == (31, 40, 2)
    E0 = m.energy(e0, w0)
    assert (flow.energy_drift() / E0.abs().clamp_min(1)).max() < 1e-6
    assert (torch.sign(flow.states[..., 1]) == torch.sign(w0)).all()
    # The flow descends: the reduced loss never increases between recorded times.
    L = m.reduced_loss(flow.states[..., 0], flow.states[..., 1])
    assert (L[1:] - L[:-1]).max() < 1e-10


def test_energy_drifts_at_rate_2e2_dLdb_when_b_flows():
    m = ReducedModel(0.5, 0.8)
    e, w, b = 0.7, -0.9, 0.6  # b away from its optimum
    v = torch.stack(m.gradient(e, w, b)).neg()
    h = 1e-6
    E = m.energy
    dE = (E(e + h * v[0], w + h * v[1]) - E(e - h * v[0], w - h * v[1])) / (2 * h)
    assert float(dE) == pytest.approx(2 * e**2 * float(m.gradient(e, w, b)[2]), rel=1e-6)
    flow = m.flow([e], [w], t_max=5.0, n_out=6, b_mode="flow", b0=b)
    assert flow.states.shape == (6, 1, 3) and float(flow.energy_drift()[0]) > 1e-4


def test_small_inits_trap_on_the_unigram_line_for_p_plus_q_above_1():
    m = ReducedModel(0.5, 0.8)  # p + q > 1
    w_trap = torch.tensor([-0.6, -0.4, -0.1, 0.1, 0.5, 1.0])
    w_escape = torch.tensor([-0.9, -1.2, -1.5])
    e0 = torch.full((9,), 0.05)
    flow = m.flow(e0, torch.cat([w_trap, w_escape]), t_max=400.0, n_out=3)
    ends = m.classify(flow.final[:, 0], flow.final[:, 1])
    assert ends[:6] == ["unigram"] * 6
    assert ends[6:] == ["global minimum"] * 3
    # Trapped flows stay on the w > -1/sqrt 2 side (they cannot cross the saddle's line).
    assert (flow.states[:, :6, 1] > SADDLE_W).all()


def test_the_mirror_statement_for_p_plus_q_below_1():
    m = ReducedModel(0.2, 0.3)  # p + q < 1: the trap is w < -1/sqrt 2
    flow = m.flow(torch.full((4,), 0.05), torch.tensor([-1.5, -1.0, 0.2, 1.0]), t_max=400.0)
    assert m.classify(flow.final[:, 0], flow.final[:, 1]) == [
        "unigram",
        "unigram",
        "global minimum",
        "global minimum",
    ]


def test_validation_and_plot(tmp_path):
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        ReducedModel(0.0, 0.5)
    with pytest.raises(ValueError, match="b_mode"):
        ReducedModel(0.5, 0.8).flow([0.1], [0.1], b_mode="sgd")
    m = ReducedModel(0.5, 0.8)
    flow = m.flow([0.3, 0.3], [-1.0, 0.5], t_max=20.0, n_out=11)
    ax = plot_reduced_landscape(m, flow, resolution=41)
    ax.figure.savefig(tmp_path / "reduced.png")
    assert (tmp_path / "reduced.png").stat().st_size > 0
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("w", "e")
    labels = set(ax.get_legend_handles_labels()[1])
    assert {"global minima", "unigram local minima", "saddle (0, -1/sqrt 2)"} <= labels
    # each flow is drawn from its start (w0, e0) to where it ended
    starts = {(round(float(ln.get_xdata()[0]), 6), round(float(ln.get_ydata()[0]), 6))
              for ln in ax.lines if len(ln.get_xdata()) == 11}  # fmt: skip
    assert {(-1.0, 0.3), (0.5, 0.3)} <= starts
    ends = flow.states[-1]
    drawn_ends = [ln for ln in ax.lines if ln.get_marker() == "s"][0]
    assert list(drawn_ends.get_xdata()) == pytest.approx(ends[:, 1].tolist())
