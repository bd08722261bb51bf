"""Ensemble training (training.stacked, training.trainer.train_ensemble, and the sweep
backend "ensemble": training.sweeps.ensemble): the batched forward equals the model, the
stacked sampler equals each chain's sampler, and an ensemble run equals trainer.train run by
run (metrics, final weights, verdicts, run directories, resume, divergence, sweeps)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from training.chains import BinaryChain, InContextChain, KthOrderChain
from training.config import ModelConfig
from training.model import MarkovTransformer
from training.options import build_run_config
from training.recipe import TrainConfig
from training.runs import load_run
from training.stacked import (
    Member,
    StackedWeights,
    architecture_key,
    ensemble_logits,
    sample_members,
)
from training.sweeps.ensemble import ensemble_backend, plan_groups
from training.trainer import TIMING_KEYS, train, train_ensemble

RTOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**kw) -> TrainConfig:
    base = dict(iters=30, batch=8, seq_len=32, eval_every=5, eval_batches=1, save_every=4)
    return TrainConfig(**(base | kw))


def close(a, b, rtol=RTOL, atol=1e-6) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=rtol, abs_tol=atol)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close(x, y, rtol, atol) for x, y in zip(a, b, strict=True))
    return a == b


def assert_same_metrics(ours: list[dict], ref: list[dict]) -> None:
    assert [m["step"] for m in ours] == [m["step"] for m in ref]
    for a, b in zip(ours, ref, strict=True):
        assert set(a) == set(b)
        for key in a:
            if key not in TIMING_KEYS:
                assert close(a[key], b[key]), (a["step"], key, a[key], b[key])


def assert_same_weights(m1: MarkovTransformer, m2: MarkovTransformer, rtol=RTOL) -> None:
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert s1.keys() == s2.keys()
    for name in s1:
        scale = s2[name].abs().max().clamp_min(1e-6)
        assert float((s1[name] - s2[name]).abs().max() / scale) < rtol, name


MEMBERS = [(0.5, 0.8, 0), (0.5, 0.8, 1), (0.2, 0.3, 2), (0.6, 0.8, 3)]


@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"tie_embeddings": False},
        {"n_layers": 2, "n_heads": 2, "attn_window": [2, None]},
        {"linear_bias": True, "ln_bias": True, "act_fn": "relu"},
        {"normalization_type": None, "positional_embedding_type": "none", "unembed_bias": False},
        {"attn_only": True, "n_heads": 4, "d_head": 3, "d_vocab": 3},
    ],
)
def test_batched_forward_equals_each_model(variant):
    cfg = ModelConfig.paper(n_ctx=24, **variant)
    models = [MarkovTransformer(cfg, seed=s) for s in range(3)]
    with torch.no_grad():  # move away from the init so that every parameter matters
        for s, m in enumerate(models):
            g = torch.Generator().manual_seed(s)
            for p in m.parameters():
                p.add_(0.3 * torch.randn(p.shape, generator=g))
    weights = StackedWeights.from_models(models)
    tokens = torch.randint(0, cfg.d_vocab, (3, 5, 20), generator=torch.Generator().manual_seed(9))
    for fused in (True, False):
        logits = ensemble_logits(cfg, weights.params, tokens, fused_attention=fused)
        assert logits.shape == (3, 5, 20, cfg.d_vocab)
        for i, m in enumerate(models):
            torch.testing.assert_close(logits[i], m(tokens[i]), rtol=1e-5, atol=1e-5)


def test_stacked_sampler_draws_what_each_chain_draws():
    chains = [
        BinaryChain(0.5, 0.8),
        KthOrderChain.lag(2, 0.2, 0.3),
        BinaryChain(0.2, 0.3, init="uniform"),
        InContextChain(),
        InContextChain(states=3, order=2, doubly_stochastic=True),
        KthOrderChain.symmetric(3, 0.4),
        InContextChain(init="stationary"),
    ]

    def gens():
        return [torch.Generator().manual_seed(100 + i) for i in range(len(chains))]

    stacked = sample_members(chains, gens(), 4, 50, torch.device("cpu"))
    alone = torch.stack([c.sample(4, 50, generator=g) for c, g in zip(chains, gens(), strict=True)])
    assert torch.equal(stacked, alone)


def test_ensemble_equals_trainer_run_by_run(tmp_path):
    tc = tiny()
    mc = ModelConfig.paper(n_ctx=32)
    members = [Member(mc, BinaryChain(p, q), s) for p, q, s in MEMBERS]
    dirs = [tmp_path / f"m{i}" for i in range(len(members))]
    timings: dict = {}
    ens = train_ensemble(members, tc, out_dirs=dirs, progress=False, timings=timings)
    assert timings["steps"] == tc.iters and timings["step_s"] > 0 and timings["data_s"] > 0
    for member, result, run_dir in zip(members, ens, dirs, strict=True):
        ref = train(member.model_config, member.chain, tc, seed=member.seed, progress=False)
        assert result["status"] == "finished" and result["ensemble_members"] == 4
        assert result["verdict"] == ref["verdict"]
        assert_same_metrics(result.metrics, ref.metrics)
        assert_same_weights(result.model, ref.model)
        summary = {k: v for k, v in result.items() if k != "ensemble_members"}
        assert set(summary) == set(ref)
        for key in ("final_eval_loss", "final_kl", "p_hat", "q_hat", "entropy_rate"):
            assert close(summary[key], ref[key]), key
        for key in ("plateau_exit_step", "steps", "seed", "n_params", "chain"):
            assert summary[key] == ref[key], key
        # the run directory is the trainer's: load_run reads it back
        run = load_run(run_dir)
        assert run.seed == member.seed and run.chain == member.chain
        assert run.checkpoint_steps() == tc.checkpoint_steps()
        assert_same_weights(run.model(device="cpu"), result.model, rtol=1e-7)
        assert run.metrics() == result.metrics
        assert run.summary()["verdict"] == result["verdict"]
        assert not (run_dir / "checkpoints" / "latest").exists()


def test_ensemble_members_resume_with_the_trainer_and_the_ensemble(tmp_path):
    import shutil

    tc = tiny(iters=20)
    mc = ModelConfig.paper(n_ctx=32, tie_embeddings=False)
    chains = [BinaryChain(0.5, 0.8), BinaryChain(0.3, 0.4), BinaryChain(0.6, 0.8)]
    members = [Member(mc, chain, 5 + i) for i, chain in enumerate(chains)]
    dirs = [tmp_path / "a", tmp_path / "b", tmp_path / "c"]
    paused = train_ensemble(members, tc, out_dirs=dirs, progress=False, stop_at=10)
    assert [r["status"] for r in paused] == ["paused"] * 3
    with pytest.raises(FileExistsError, match="unfinished run"):
        train_ensemble(members, tc, out_dirs=dirs, progress=False)
    # member 0 finishes with the ordinary trainer; member 2 lost its step-10 checkpoint (as
    # if killed while the ensemble saved), so it resumes from step 8 in its own ensemble
    a = train(mc, chains[0], tc, seed=5, out_dir=dirs[0], resume=True, progress=False)
    shutil.rmtree(dirs[2] / "checkpoints" / "latest")
    res = train_ensemble(members, tc, out_dirs=dirs, progress=False, resume=True)
    assert res[0]["verdict"] == a["verdict"] and res[0].metrics == a.metrics  # only read
    for member, result in zip(members, res, strict=True):
        ref = train(mc, member.chain, tc, seed=member.seed, progress=False)
        assert result["status"] == "finished"
        assert_same_metrics(result.metrics, ref.metrics)
        assert_same_weights(result.model, ref.model)
        assert load_run(result.path).metrics() == result.metrics


def test_members_paused_at_step_zero_resume_with_one_step_zero_record(tmp_path):
    tc = tiny(iters=4, eval_every=2)
    mc = ModelConfig.paper(n_ctx=32)
    members = [Member(mc, BinaryChain(0.5, 0.8), 0), Member(mc, BinaryChain(0.2, 0.3), 1)]
    dirs = [tmp_path / "a", tmp_path / "b"]
    train_ensemble(members, tc, out_dirs=dirs, progress=False, stop_at=0)
    assert [m["step"] for m in load_run(dirs[0]).metrics()] == [0]
    res = train_ensemble(members, tc, out_dirs=dirs, progress=False, resume=True)
    for r, d in zip(res, dirs, strict=True):
        assert [m["step"] for m in r.metrics] == [0, 2, 4]
        assert load_run(d).metrics() == r.metrics


def test_a_diverging_member_stops_alone(tmp_path, monkeypatch):
    import training.trainer.loop as loop  # where the loop looks _train_step up

    tc = tiny(iters=12, batch=4, seq_len=16, eval_every=4)
    ok = ModelConfig.paper(n_ctx=16)
    members = [Member(ok, BinaryChain(0.5, 0.8), 0), Member(ok, BinaryChain(0.5, 0.8), 1)]
    dirs = [tmp_path / "ok", tmp_path / "bad"]
    real_step = loop._train_step

    def first_update_blows_up_member_1(run, tokens):
        # (v1's init_range=1e6 member diverged only through a second forward implementation
        # that disagreed with the trainer's; this overflows member 1's weights for real)
        values = real_step(run, tokens)
        if run.step == 0 and run.weights.n_members == 2:
            with torch.no_grad():
                run.weights.params["embed.W_E"][1].fill_(float("inf"))
        return values

    monkeypatch.setattr(loop, "_train_step", first_update_blows_up_member_1)
    res = train_ensemble(members, tc, out_dirs=dirs, progress=False)
    assert res[0]["status"] == "finished"
    assert res[1]["status"] == "diverged"
    summary = json.loads((dirs[1] / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["diverged_step"] == 1
    assert load_run(dirs[1]).checkpoint_steps() == [0]
    ref = train(ok, members[0].chain, tc, seed=0, progress=False)
    assert_same_metrics(res[0].metrics, ref.metrics)
    assert_same_weights(res[0].model, ref.model)


def test_per_member_gradient_clipping_and_in_context_chains():
    tc = tiny(iters=10, grad_clip=0.05)
    mc = ModelConfig.paper(n_ctx=32, d_vocab=3, n_heads=2)
    members = [
        Member(mc, InContextChain(states=3), 0),
        Member(mc, KthOrderChain.symmetric(3, 0.3), 1),
    ]
    ens = train_ensemble(members, tc, progress=False)
    for member, result in zip(members, ens, strict=True):
        ref = train(mc, member.chain, tc, seed=member.seed, progress=False)
        assert_same_metrics(result.metrics, ref.metrics)
        assert_same_weights(result.model, ref.model)


def test_members_of_different_shapes_are_refused():
    tc = tiny(iters=2)
    a = Member(ModelConfig.paper(n_ctx=32), BinaryChain(0.5, 0.8), 0)
    b = Member(ModelConfig.paper(n_ctx=32, n_layers=2), BinaryChain(0.5, 0.8), 1)
    with pytest.raises(ValueError, match="member 1 has n_layers=2 but member 0 has n_layers=1"):
        train_ensemble([a, b], tc, progress=False)
    c = Member(ModelConfig.paper(n_ctx=32, tie_embeddings=False), BinaryChain(0.5, 0.8), 1)
    with pytest.raises(ValueError, match="tie_embeddings"):
        train_ensemble([a, c], tc, progress=False)
    # init and init_range change only the initial values: same architecture
    d = Member(ModelConfig.paper(n_ctx=32, init="theta_pi"), BinaryChain(0.5, 0.8), 1)
    assert architecture_key(a.model_config) == architecture_key(d.model_config)


def test_bad_ensemble_inputs_are_refused(tmp_path):
    tc = tiny(iters=2)
    m = Member(ModelConfig.paper(n_ctx=32), BinaryChain(0.5, 0.8), 0)
    with pytest.raises(ValueError, match="at least one member"):
        train_ensemble([], tc)
    with pytest.raises(ValueError, match="same out_dir"):
        train_ensemble([m, m], tc, out_dirs=[tmp_path / "x", tmp_path / "x"], progress=False)
    with pytest.raises(ValueError, match="2 members but 1 out_dirs"):
        train_ensemble([m, m], tc, out_dirs=[tmp_path / "x"], progress=False)
    with pytest.raises(ValueError, match="must be a Member"):
        train_ensemble(["p=0.5"], tc)
    with pytest.raises(ValueError, match="d_vocab=2 but the chain has 3 states"):
        train_ensemble([Member(m.model_config, InContextChain(states=3), 0)], tc)
    rc = build_run_config({"chain": {"p": 0.5, "q": 0.8}, "train": {"iters": 3, "seq_len": 32}})
    with pytest.raises(ValueError, match="share one TrainConfig"):
        train_ensemble([rc], tc)


def test_sweep_backend_trains_same_shape_cells_together(tmp_path):
    from training import sweeps

    assert sweeps.get_backend("ensemble") is ensemble_backend
    spec = {
        "chain": {"p": [0.3, 0.6], "q": 0.8},
        "model": {"d_model": 8, "tie": [True, False]},
        "train": {"iters": 6, "seq_len": 16, "batch": 4, "eval_every": 3, "eval_batches": 1},
        "seeds": 2,
    }
    tasks = sweeps.expand(spec, tmp_path / "plan")
    groups, rest = plan_groups(tasks)
    assert sorted(len(g) for g in groups) == [4, 4] and rest == []
    groups, rest = plan_groups(tasks, max_members=3)
    assert sorted(len(g) for g in groups) == [3, 3] and len(rest) == 2
    # two workers: each group of 4 is split into two ensembles of 2, one process each
    result = sweeps.run_sweep(
        spec, tmp_path / "sweep", workers=2, backend="ensemble", progress=False
    )
    assert len(result.rows) == 8
    assert all(r["status"] == "finished" for r in result.rows)
    for row in result.rows:
        run = load_run(row["run_dir"])
        assert run.summary()["ensemble_members"] == 2
        ref = train(run.model_config, run.chain, run.train_config, seed=run.seed, progress=False)
        assert run.summary()["verdict"] == ref["verdict"]
        assert_same_metrics(run.metrics(), ref.metrics)
