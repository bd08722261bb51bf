"""The atlas: its labels on constructed cases, its measurements' invariants, and a tiny atlas
end to end (train, measure, tables, figures, resume, CLI errors)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

from interp.atlas.claims import check_claims
from interp.atlas.grid import PRESETS, chain_name, chains, preset_spec
from interp.atlas.labels import INDUCTION, atlas_label, carrier_of
from interp.atlas.measure import (
    AtlasConfig,
    dependence_at_lag,
    measure_model,
    transfer_chains,
)
from interp.atlas.records import RECORDS, RESTORED, read_records, restore_records, write_records
from interp.atlas.runner import (
    collect_atlas,
    first_step_from,
    flatten,
    head_steps,
    load_atlas,
    mechanism_step,
    run_atlas,
)
from interp.corruptions import make_patching_data
from interp.explain import finite_json
from interp.landscape import theta_pi_model
from interp.patching import make_metric
from tests.interp.test_circuits import induction_model
from tests.tiny_runs import CHAIN, SEQ_LEN, one_thread, train_tiny
from training.chains import BinaryChain, InContextChain, KthOrderChain
from training.config import ModelConfig
from training.recipe import TrainConfig
from training.runs import load_run
from training.sweeps import expand
from training.trainer import train

FAST = AtlasConfig(n_seqs=64, probes=False, timeline=False)
FAST_CIRCUIT = AtlasConfig(n_seqs=32, probes=False, timeline=False)


@pytest.fixture(scope="module")
def untied_run(tmp_path_factory):
    with one_thread():
        return load_run(
            train_tiny(tmp_path_factory.mktemp("untied"), iters=120, tie_embeddings=False)
        )


@pytest.fixture(scope="module")
def in_context_run(tmp_path_factory):
    """Two attention-only layers on in-context binary chains (a fresh kernel per sequence)."""
    out = tmp_path_factory.mktemp("in_context")
    cfg = ModelConfig.paper(n_ctx=32, n_layers=2, d_model=16, attn_only=True)
    tc = TrainConfig(
        iters=300,
        batch=32,
        seq_len=32,
        lr=1e-2,
        eval_every=25,
        eval_batches=1,
        save_every=0,
        device="cpu",
        checkpoints_per_octave=0,
    )
    with one_thread():
        train(cfg, InContextChain(2, 1), tc, seed=0, out_dir=out, progress=False)
    return load_run(out)


# ------------------------------------------------------------------- labels, constructed


def test_model_at_theta_pi_is_marginal_only():
    model = theta_pi_model(ModelConfig.paper(n_ctx=SEQ_LEN), CHAIN, seed=0)
    m = measure_model(model, CHAIN, FAST)
    assert abs(m["lags"][0]["rho"]) < 1e-4  # the output does not move when x_n flips
    assert atlas_label(m)["label"] == "marginal only"


def test_trained_untied_model_reads_x_n_in_weights(untied_run):
    summary = untied_run.summary()
    m = measure_model(untied_run.model(), CHAIN, FAST, SEQ_LEN)
    label = atlas_label(m, summary)
    assert summary["verdict"] == "bigram"
    assert m["lags"][0]["rho"] > 0.5
    assert label["label"].startswith("kernel")
    assert not label["in_context"]  # on other chains it keeps its training kernel
    assert m["transfer"]["mean"]["in_context_index"] < 0.2


def test_attention_ablated_without_effect_is_not_the_carrier(untied_run):
    """Silence attention (W_O = b_O = 0): its ablation changes nothing, so whatever carries
    the dependence, the label must not name attention."""
    model = untied_run.model()
    with torch.no_grad():
        for block in model.blocks:
            block.attn.W_O.zero_()
            block.attn.b_O.zero_()
    m = measure_model(model, CHAIN, FAST, SEQ_LEN)
    lag = m["lags"][0]
    assert abs(lag["necessity"]["attention"]) < 1e-6
    assert abs(lag["shares"]["noise"]["attention"]) < 1e-6
    label = atlas_label(m, untied_run.summary())
    assert label["carrier"] != "attention" and "attention" not in label["label"]


@pytest.mark.parametrize(
    ("shares", "necessity", "expected"),
    [
        (
            {"attention": 0.9, "mlp": 0.05, "direct": 0.05},
            {"attention": 0.8, "mlp": 0.0},
            "attention",
        ),
        (
            {"attention": 0.9, "mlp": 0.05, "direct": 0.05},
            {"attention": 0.1, "mlp": 0.0},
            "distributed",
        ),  # written by attention but not needed: not credited
        ({"attention": 0.1, "mlp": 1.2, "direct": -0.3}, {"attention": 0.0, "mlp": 1.1}, "mlp"),
        ({"attention": 0.2, "mlp": 0.1, "direct": 0.7}, {"attention": 0.0, "mlp": 0.1}, "direct"),
        (
            {"attention": 0.4, "mlp": 0.4, "direct": 0.2},
            {"attention": 0.6, "mlp": 0.6},
            "distributed",
        ),
    ],
)
def test_carrier_rule(shares, necessity, expected):
    lag = {"shares": {"noise": shares, "denoise": shares}, "necessity": necessity}
    assert carrier_of(lag) == expected


def test_two_layer_in_context_model_is_labelled_in_context(in_context_run):
    m = measure_model(in_context_run.model(), in_context_run.chain, FAST, 32)
    label = atlas_label(m, in_context_run.summary())
    assert m["transfer"]["mean"]["in_context_index"] > 0.5
    assert label["in_context"] and label["label"].endswith("(in-context)")
    assert label["carrier"] == "attention"  # attention-only: nothing else can read the past


@pytest.mark.parametrize("copy_previous", [True, False])
def test_in_context_runs_carry_the_induction_circuit(copy_previous):
    """In-context chains: the atlas measures induction_circuit and labels the hand-built
    two-layer circuit ``in-context (induction)``; without its previous-token write the rules
    1-4 label stands. The numbers reach atlas.csv (flatten) and the record is JSON."""
    model = induction_model(copy_previous=copy_previous)
    m = measure_model(model, InContextChain(2, 1), FAST_CIRCUIT, 48)
    label = atlas_label(m)
    circuit = m["circuit"]
    assert circuit["label"]["holds"] is copy_previous and label["induction"] is copy_previous
    if copy_previous:
        assert label["label"] == INDUCTION
        assert circuit["previous_token_head"] == [0, 0] and circuit["matching_head"] == [1, 0]
        assert circuit["previous_token_excess"] > 0.85 and circuit["match_excess"] > 0.3
    else:
        assert (
            label["label"] == atlas_label({k: v for k, v in m.items() if k != "circuit"})["label"]
        )
        assert label["label"] != INDUCTION
    row = flatten(json.loads(json.dumps(finite_json(m | label), allow_nan=False)))
    assert row["induction"] is copy_previous
    assert row["circuit_previous_token_excess"] == pytest.approx(circuit["previous_token_excess"])
    assert row["circuit_path_removed"] == pytest.approx(circuit["path_removed"])


def test_fixed_kernel_runs_have_no_circuit(untied_run):
    m = measure_model(untied_run.model(), CHAIN, FAST, SEQ_LEN)
    label = atlas_label(m, untied_run.summary())
    assert "circuit" not in m and label["induction"] is False
    assert "induction" not in flatten(finite_json(m | label))


# ------------------------------------------------------------------------- measurements


def test_shares_add_up_without_final_layernorm(tmp_path):
    """Without LayerNorm the logits are linear in the final residual, so the direct-path
    shares of embedding, attention and MLP sum to 1 exactly (the readout is float64 on the
    rebuilt residual, so this holds on every instruction set), noising and denoising."""
    with one_thread():
        run = load_run(train_tiny(tmp_path, iters=60, normalization_type=None))
    d = dependence_at_lag(run.model(), CHAIN, 0, 64, SEQ_LEN, seed=0)
    for direction in ("noise", "denoise"):
        assert sum(d["shares"][direction].values()) == pytest.approx(1.0, abs=1e-9)


def test_necessity_is_the_flip_effect_left_under_mean_ablation(untied_run):
    """necessity: every layer's attn_out (mlp_out) replaced by its mean over the clean batch at
    each position, in the clean and the corrupted run; bitwise a hand-written ablation's."""
    model = untied_run.model().eval()
    d = dependence_at_lag(model, CHAIN, 0, 64, SEQ_LEN, seed=0)
    gen = torch.Generator().manual_seed(101)  # dependence_at_lag's batch at lag 0
    data = make_patching_data(CHAIN, "flip", 64, SEQ_LEN, gen, position=-1)
    fn = make_metric("logit_diff", data)
    with torch.no_grad():
        _, cache = model.run_with_cache(  # attn_out / mlp_out only: fused attention
            data.clean,
            names_filter=lambda n: n.endswith(("hook_attn_out", "hook_mlp_out")),
            return_cache_object=False,
        )

    def mean(x, hook):
        return cache[hook.name].mean(0, keepdim=True).expand_as(x)

    assert set(d["necessity"]) == {"attention", "mlp"}
    for kind, act in (("attention", "attn_out"), ("mlp", "mlp_out")):
        hooks = [(f"blocks.{layer}.hook_{act}", mean) for layer in range(model.cfg.n_layers)]
        with torch.no_grad(), model.hooks(fwd_hooks=hooks):
            ablated = float(fn(model(data.clean)).mean() - fn(model(data.corrupt)).mean())
        assert d["necessity"][kind] == 1.0 - ablated / d["effect"]


def test_lag_the_truth_ignores_has_no_ratio_but_a_sensitivity(untied_run):
    d = dependence_at_lag(untied_run.model(), CHAIN, 1, 64, SEQ_LEN, seed=0)
    assert math.isnan(d["rho"]) and d["true_sensitivity"] == 0.0
    assert d["sensitivity"] >= 0.0


def test_transfer_chains_are_the_same_family_with_other_parameters():
    assert all(
        isinstance(c, BinaryChain) and (c.p, c.q) != (0.5, 0.8)
        for c in transfer_chains(BinaryChain(0.5, 0.8))
    )
    lag = transfer_chains(KthOrderChain.lag(2, 0.2, 0.3))
    assert all(c.order == 2 and c.label.startswith("lag(") for c in lag)
    rand = transfer_chains(KthOrderChain.random(2, 2, 1.0, seed=0))
    assert all(c.order == 2 and c != KthOrderChain.random(2, 2, 1.0, seed=0) for c in rand)


def test_mechanism_step_is_the_start_of_the_last_unbroken_stretch():
    pts = [
        {"step": 1, "rho": 0.0, "shares": {"mlp": 0.0}},
        {"step": 2, "rho": 0.9, "shares": {"mlp": 0.9}},
        {"step": 4, "rho": 0.2, "shares": {"mlp": 0.9}},
        {"step": 8, "rho": 0.8, "shares": {"mlp": 0.7}},
        {"step": 16, "rho": 1.0, "shares": {"mlp": 1.0}},
    ]
    assert mechanism_step(pts, "mlp") == 8
    assert mechanism_step(pts, "attention") is None
    assert mechanism_step(pts[:1], "mlp") is None


# ------------------------------------------------------------------------------- grids


def test_paper_preset_is_the_issue_grid(tmp_path):
    tasks = expand(preset_spec("paper"), tmp_path)
    assert len(tasks) == 4 * 3 * 5 * 2 * 2 * 5
    names = {chain_name(t.options["chain"]) for t in tasks}
    assert names == set(chains())
    windows = {json.dumps(t.options["model"]["window"]) for t in tasks}
    assert windows == {"null", "1", "2", "8", "32"}
    lag2 = [t for t in tasks if chain_name(t.options["chain"]) == "lag2-p0.2-q0.3"]
    assert {t.options["model"]["d_model"] for t in lag2} == {32}
    assert {t.options["train"]["iters"] for t in lag2} == {800}
    assert {t.options["train"]["eval_seed"] for t in tasks} == {
        preset_spec("paper")[0]["train"]["eval_seed"]
    }


def test_in_context_preset_is_the_issue_grid(tmp_path):
    spec = preset_spec("in-context")
    tasks = expand(spec, tmp_path)
    assert len(tasks) == 2 * 4 * 4 * 2 * 2 * 5  # orders x depth x window x tie x MLP x seeds
    assert {chain_name(t.options["chain"]) for t in tasks} == {
        "in-context-s2-k1",
        "in-context-s2-k2",
    }
    # blocks run in order: order 1 at full attention first, then its windows, then order 2
    assert [(b["chain"]["order"], b["model"]["window"]) for b in spec] == [
        (1, [None]),
        (1, [1, 2, 8]),
        (2, [None]),
        (2, [1, 2, 8]),
    ]
    first = tasks[: 4 * 2 * 2 * 5]
    assert {t.options["model"]["window"] for t in first} == {None}
    assert {t.options["chain"]["order"] for t in first} == {1}
    assert {t.options["model"]["layers"] for t in tasks} == {1, 2, 3, 4}
    assert {t.options["train"]["checkpoints_per_octave"] for t in tasks} == {4}
    paper = preset_spec("in-context-paper")[0]["train"]
    assert (paper["seq_len"], paper["iters"], paper["lr"]) == (512, 8000, 0.01)


def test_head_steps_is_the_first_step_it_stays_formed():
    pts = [
        {"step": 0, "previous_token_excess": 0.0, "induction_excess": 0.0},
        {"step": 8, "previous_token_excess": 0.3, "induction_excess": 0.0},
        {"step": 16, "previous_token_excess": 0.1, "induction_excess": 0.25},
        {"step": 32, "previous_token_excess": 0.4, "induction_excess": 0.3},
        {"step": 64, "previous_token_excess": 0.5, "induction_excess": None},
    ]
    assert head_steps(pts) == {"previous_token_step": 32, "induction_step": None}
    assert head_steps(pts[:4]) == {"previous_token_step": 32, "induction_step": 16}
    assert first_step_from([], lambda p: True) is None


def test_in_context_claims_select_their_chains():
    base = {"carrier": "attention", "window": "full", "tie": True, "mlp": True, "reached": True}
    rows = [
        base | {"chain": "in-context-s2-k1", "layers": 2, "induction": True},
        base | {"chain": "in-context-s2-k1", "layers": 3, "induction": "False"},
        base | {"chain": "in-context-s2-k1", "layers": 1, "induction": False, "reached": False},
        base | {"chain": "p0.5-q0.8", "layers": 2, "induction": True},  # not in-context
    ]
    by = {c["claim"]: c for c in check_claims(rows)}
    deep = by[
        "in-context chains, 2 or more layers, full attention: an induction mechanism "
        "(labelled in-context (induction))"
    ]
    assert (deep["k"], deep["n"]) == (1, 2)
    one = by[
        "in-context chains (a kernel per sequence), 1 layer, full attention: no induction "
        "mechanism (never labelled in-context (induction))"
    ]
    assert (one["k"], one["n"]) == (1, 1)


def test_in_context_atlas_end_to_end(tmp_path):
    out = tmp_path / "atlas"
    with one_thread():
        files = run_atlas(
            preset_spec("in-context-test"),
            out,
            AtlasConfig(n_seqs=32, probes=False),
            workers=1,
            progress=False,
        )
    for name in ("stages", "head_steps"):
        assert files[name].is_file() and files[name].stat().st_size > 0
    rows = load_atlas(out)
    assert len(rows) == 8
    assert {r["chain"] for r in rows} == {"in-context-s2-k1", "in-context-s2-k2"}
    for r in rows:
        record = json.loads((Path(r["run_dir"]) / "atlas.json").read_text())
        assert "circuit" in record and r["induction"] in (True, False)
        assert [p["step"] for p in record["timeline"]] == load_run(r["run_dir"]).checkpoint_steps()
        assert all("previous_token_excess" in p for p in record["timeline"])
        assert head_steps(record["timeline"]) == {
            k: record[k] for k in ("previous_token_step", "induction_step")
        }
    md = (out / "atlas.md").read_text()
    assert "## In-context chains (a kernel per sequence), full attention" in md
    assert "in-context chains, 2 or more layers" in md
    # --collect: the same tables from the measured runs alone, training nothing
    spec = preset_spec("in-context-test")
    measured_with = AtlasConfig(n_seqs=32, probes=False)
    collected = collect_atlas(spec, out, tmp_path / "collected", config=measured_with)
    assert (tmp_path / "collected" / "atlas.csv").read_text() == (out / "atlas.csv").read_text()
    assert "Collected: 8 of the spec's 8 runs" in collected["atlas_md"].read_text()
    (Path(rows[-1]["run_dir"]) / "atlas.json").unlink()  # an unmeasured run is left out
    collect_atlas(spec, out, tmp_path / "partial", config=measured_with)
    assert len(load_atlas(tmp_path / "partial")) == 7
    from tests.training.test_hostile_input import run_cli

    argv = ["atlas", "--preset", "in-context-test", "--out", str(out)]
    rc, _, err = run_cli([*argv, "--collect", str(tmp_path / "partial")])
    assert rc == 2 and "already holds atlas.md; add --force" in err
    rc, _, err = run_cli([*argv, "--collect", str(tmp_path / "partial"), "--force"])
    assert rc == 0, err
    check_records_carry_the_atlas_on(spec, out, tmp_path, run_cli)


def check_records_carry_the_atlas_on(spec, out, tmp_path, run_cli):
    """An atlas restored from a --collect's records on another machine trains nothing and
    gives the same tables; a run here is never overwritten; a record measured otherwise is
    not restored."""
    collected = tmp_path / "collected"
    records = sorted((collected / RECORDS).glob("*.jsonl.gz"))
    assert (
        len(records) == len({t.cell for t in expand(spec, out)})
        and len(read_records(collected)) == 8
    )
    config = AtlasConfig(n_seqs=32, probes=False)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.json")}
    assert restore_records(expand(spec, out), collected, config.to_dict())["present"] == 8
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.json")} == before
    elsewhere = tmp_path / "elsewhere"
    other = AtlasConfig(n_seqs=16, probes=False).to_dict()
    assert restore_records(expand(spec, elsewhere), collected, other) == {
        "restored": 0,
        "present": 0,
        "mismatched": 8,
    }
    assert not elsewhere.exists()
    with one_thread():
        run_atlas(spec, elsewhere, config, workers=1, progress=False, restore=collected)
    assert not list(elsewhere.rglob("checkpoints"))  # nothing was trained
    assert len(list(elsewhere.rglob(RESTORED))) == 8
    assert not list(elsewhere.rglob(".*.restoring-*"))  # each run renamed into place whole
    table = (collected / "atlas.csv").read_text().replace(str(out), str(elsewhere))
    assert (elsewhere / "atlas.csv").read_text() == table
    assert (elsewhere / "stages.png").stat().st_size > 0
    again = tmp_path / "again"  # the restored runs' records are the same bytes
    write_records(expand(spec, elsewhere), again)
    assert [p.read_bytes() for p in sorted((again / RECORDS).glob("*"))] == [
        p.read_bytes() for p in records
    ]
    argv = ["atlas", "--preset", "in-context-test", "--out", str(tmp_path / "x")]
    rc, _, err = run_cli([*argv, "--restore", str(tmp_path / "partial" / "none")])
    assert rc == 2 and "holds no atlas records" in err
    records[0].write_bytes(b"not gzip")
    rc, _, err = run_cli([*argv, "--restore", str(collected)])
    assert rc == 2 and "is not an atlas record file" in err and "Traceback" not in err


def test_presets_and_bad_preset():
    for p in PRESETS:
        assert preset_spec(p)
    with pytest.raises(ValueError, match="unknown atlas preset 'huge'; allowed: paper"):
        preset_spec("huge")


# -------------------------------------------------------------------------- end to end


def test_tiny_atlas_end_to_end_and_resume(tmp_path):
    out = tmp_path / "atlas"
    with one_thread():
        files = run_atlas(
            preset_spec("test"), out, AtlasConfig(n_seqs=32), workers=1, progress=False
        )
    for name in ("atlas_md", "atlas_csv", "cells_csv", "atlas_grid", "in_context", "timeline"):
        assert files[name].is_file() and files[name].stat().st_size > 0
    rows = load_atlas(out)
    assert len(rows) == 8
    assert {r["chain"] for r in rows} == {"p0.5-q0.8", "lag2-p0.2-q0.3"}
    assert all(r["status"] == "finished" for r in rows)
    for r in rows:
        record = json.loads((Path(r["run_dir"]) / "atlas.json").read_text())
        assert record["label"] == r["label"]
        if r["label"] == "marginal only":
            assert (
                all(abs(d["rho"]) <= 0.1 for d in record["lags"] if d["rho"] is not None)
                or r["verdict"] == "unigram"
            )
    cells = (out / "cells.csv").read_text().splitlines()
    assert len(cells) == 1 + 8
    md = (out / "atlas.md").read_text()
    assert "## Pooled by window" in md and "[" in md
    stamps = {
        r["run_dir"]: os.stat(os.path.join(r["run_dir"], "atlas.json")).st_mtime_ns for r in rows
    }
    with one_thread():
        run_atlas(preset_spec("test"), out, AtlasConfig(n_seqs=32), workers=1, progress=False)
    assert stamps == {
        r["run_dir"]: os.stat(os.path.join(r["run_dir"], "atlas.json")).st_mtime_ns
        for r in load_atlas(out)
    }  # nothing re-measured


def test_cli_errors_are_one_line(tmp_path, capsys):
    from markov_lens.cli import main

    assert main(["atlas", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "give either a SPEC file or --preset" in err
    assert main(["atlas", "--preset", "test", "--seeds", "0", "--out", str(tmp_path)]) == 2
    assert "--seeds must be a positive integer, got 0" in capsys.readouterr().err
    assert main(["atlas", "--preset", "huge", "--out", str(tmp_path)]) == 2
    assert "unknown preset 'huge'; allowed: paper" in capsys.readouterr().err
    assert main(["atlas", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "b")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="nowhere does not exist"):
        load_atlas(tmp_path / "nowhere")


def test_claims_count_seeds_and_call_status():
    from interp.atlas.claims import check_claims

    base = {"chain": "p0.5-q0.8", "layers": 1, "tie": True, "mlp": True, "window": "full"}
    rows = [base | {"carrier": "none", "reached": False}] * 9 + [
        base | {"carrier": "mlp", "reached": True}
    ]
    rows += [base | {"carrier": "failed"}]  # not measured: not counted
    first = check_claims(rows)[0]
    assert first["claim"].startswith("1 layer, tied, p+q > 1")
    assert (first["k"], first["n"], first["status"]) == (9, 10, "held")
    assert first["held for"] == "9/10 [0.60, 0.98]"
    assert check_claims(rows)[4]["status"] == "no runs"
