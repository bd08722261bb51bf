"""Probes on really trained tiny models (training.trainer): a kernel-learning model against the
theta_pi unigram point and a random-init model, with controls, over checkpoints, via the CLI.

The models are tiny (d_model 16, 32 tokens, 150 updates: seconds on a CPU); the module runs
torch on one thread while it lasts (tiny matrices gain nothing from more, and a busy machine
makes thread contention expensive)."""

import math

import pytest

from markov_lens.cli import main
from probes.sweeps import ProbeConfig, first_decodable_step, probe_model, probe_run, read_csv
from tests.figures import assert_drawn
from training.chains import BinaryChain
from training.config import ModelConfig
from training.inits import init_theta_pi
from training.model import MarkovTransformer
from training.recipe import TrainConfig
from training.references import stationary_marginal
from training.runs import load_run
from training.trainer import train

CHAIN = BinaryChain(0.2, 0.3)
CFG = ModelConfig.paper(d_model=16, n_ctx=32, tie_embeddings=False)
TRAIN = TrainConfig(
    iters=150,
    batch=32,
    seq_len=32,
    lr=1e-2,
    eval_every=50,
    eval_batches=1,
    save_every=0,
    device="cpu",
)
COMPONENTS = ["embed", "resid_pre.0", "attn_out.0", "mlp_post.0", "resid_final", "ln_final"]
TARGETS = ["x_n", "x_n-1", "next_prob", "position", "model_prob"]


pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, one_thread_module):
    out = tmp_path_factory.mktemp("probe_runs") / "kernel"
    result = train(CFG, CHAIN, TRAIN, seed=0, out_dir=out, progress=False)
    assert result["verdict"] == "bigram"  # it learnt the kernel
    return out


@pytest.fixture(scope="module")
def models(run_dir):
    trained = load_run(run_dir).model(device="cpu")
    theta = init_theta_pi(MarkovTransformer(CFG, seed=0), stationary_marginal(CHAIN)).eval()
    return {"trained": trained, "theta_pi": theta}


def _index(rows):
    return {(r["component"], r["target"]): r for r in rows}


@pytest.fixture(scope="module")
def tables(models):
    config = ProbeConfig(
        n_seqs=128, n_positions=None, components=COMPONENTS, targets=TARGETS, device="cpu"
    )
    return {name: _index(probe_model(m, CHAIN, config)) for name, m in models.items()}


def test_current_token_is_decodable_from_the_embedding(tables):
    t, th = tables["trained"], tables["theta_pi"]
    assert t["embed", "x_n"]["score"] == 1.0
    assert t["resid_pre.0", "x_n"]["score"] >= 0.99
    # theta_pi has W_E = 0: nothing beyond the majority class
    assert th["embed", "x_n"]["score"] == pytest.approx(th["embed", "x_n"]["chance"], abs=1e-9)


def test_kernel_probability_is_decodable_in_the_kernel_model_not_at_theta_pi(tables):
    t, th = tables["trained"], tables["theta_pi"]
    for comp in ("resid_final", "ln_final"):
        assert t[comp, "next_prob"]["score"] >= 0.98
        # R^2 against the training mean: 0 is "no better than a constant prediction"
        assert abs(th[comp, "next_prob"]["score"]) <= 0.02
        assert t[comp, "next_prob"]["shuffled_score"] == pytest.approx(0.0, abs=0.02)
    # the theta_pi residual stream still carries position (W_pos), only no token
    assert th["resid_final", "position"]["score"] >= 0.25
    # and its output is the same everywhere: nothing to decode, said so
    assert math.isnan(th["ln_final", "model_prob"]["score"])
    assert "constant" in th["ln_final", "model_prob"]["note"]
    assert t["ln_final", "model_prob"]["score"] >= 0.99


def test_ridge_penalty_follows_the_signal(tables):
    assert tables["trained"]["ln_final", "next_prob"]["penalty"] <= 1e-3
    assert tables["theta_pi"]["resid_final", "next_prob"]["penalty"] >= 0.1


def test_control_tasks_score_near_their_chance(tables):
    t, th = tables["trained"], tables["theta_pi"]
    # a representation with no information at all (theta_pi: attn_out = mlp_post = 0)
    for comp in ("attn_out.0", "mlp_post.0"):
        row = th[comp, "x_n"]
        assert row["control_score"] == pytest.approx(row["control_chance"], abs=1e-9)
    # d_model-wide streams of the trained model cannot memorise 64 (position, token) types
    for comp in ("embed", "resid_pre.0", "resid_final", "ln_final"):
        row = t[comp, "x_n"]
        assert row["control_score"] - row["control_chance"] <= 0.12
        assert row["selectivity"] >= 0.2


def test_selectivity_is_low_when_the_control_can_be_memorised(models):
    """With token types the control task is a relabelling of x_n: any probe that reads x_n
    solves it, so x_n's accuracy of 1 has selectivity ~0 (the probe's capacity, not the
    representation, explains it)."""
    config = ProbeConfig(
        n_seqs=96, n_positions=None, components=["embed", "mlp_post.0", "ln_final"],
        targets=["x_n"], control="token", random_baseline=False, device="cpu",
    )  # fmt: skip
    for row in probe_model(models["trained"], CHAIN, config):
        assert row["score"] == 1.0
        assert abs(row["selectivity"]) <= 0.01


def test_random_model_baseline(tables):
    t = tables["trained"]
    # a random network also decodes the token (so that alone means little) ...
    assert t["embed", "x_n"]["random_score"] == 1.0
    # ... but the trained model carries the kernel probability more linearly at the end
    for comp in ("resid_final", "ln_final"):
        assert t[comp, "next_prob"]["score"] > t[comp, "next_prob"]["random_score"]


def test_probe_over_checkpoints(run_dir):
    config = ProbeConfig(
        n_seqs=64, n_positions=16, components=["resid_final", "ln_final"],
        targets=["x_n", "next_prob"], device="cpu",
    )  # fmt: skip
    rows = probe_run(run_dir, config, steps=[0, 16, 150])
    assert sorted({r["step"] for r in rows}) == [0, 16, 150]
    assert {r["run"] for r in rows} == {"kernel"}
    last = _index(r for r in rows if r["step"] == 150)
    assert last["ln_final", "next_prob"]["score"] >= 0.98
    first = first_decodable_step(rows, "next_prob", threshold=0.98)
    assert first["ln_final"] is not None and first["ln_final"] <= 150
    # the random baseline is computed once and shared by every checkpoint
    rnd = {r["random_score"] for r in rows if r["component"] == "ln_final" and r["target"] == "x_n"}
    assert len(rnd) == 1


def test_cli_over_checkpoints(run_dir, tmp_path, capsys):
    out = tmp_path / "probes"
    argv = ["probe", str(run_dir), "--checkpoints", "0,150", "--n-seqs", "48", "--positions", "8",
            "--targets", "x_n", "next_prob", "--components", "embed,ln_final", "--out", str(out),
            "--no-random-baseline", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    rows = read_csv(out / "probes.csv")
    assert len(rows) == 2 * 2 * 2 and {r["step"] for r in rows} == {0, 150}
    for name in ("heatmap_score.png", "heatmap_selectivity.png", "steps_next_prob.png"):
        assert_drawn(out / name)
    assert "next_prob" in capsys.readouterr().out


def test_tables_carry_chance_and_selectivity_only_above_chance(tables):
    t, th = tables["trained"], tables["theta_pi"]
    for row in [*t.values(), *th.values()]:
        if row["kind"] == "discrete" and not row["note"].startswith("constant"):
            assert 0 < row["chance"] < 1 and math.isfinite(row["control_score"])
            assert math.isfinite(row["selectivity"]) == row["above_chance"], row
    # theta_pi's embedding is zero: x_n at chance there, so no selectivity, and the row says so
    at_chance = th["embed", "x_n"]
    assert at_chance["above_chance"] is False and math.isnan(at_chance["selectivity"])
    assert at_chance["note"] == "at chance: no selectivity"
    decoded = t["embed", "x_n"]
    assert decoded["above_chance"] is True
    assert decoded["selectivity"] == pytest.approx(decoded["score"] - decoded["control_score"])
