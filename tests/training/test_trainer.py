"""The trainer: the paper's recipe, seeding, metrics, resume (in process and after SIGKILL),
divergence, verdicts and the plateau, and the run-directory loader."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from training import fused_attention
from training.chains import BinaryChain, InContextChain, KthOrderChain
from training.config import ModelConfig
from training.model import MarkovTransformer
from training.options import build_run_config
from training.recipe import TrainConfig
from training.runs import load_run, read_metrics
from training.trainer import (
    TIMING_KEYS,
    TrainingDiverged,
    decay_parameter_names,
    derive_seed,
    lr_schedule,
    make_optimizer,
    train,
)
from training.verdicts import VerdictRule, plateau_stats, summarise_metrics, verdict

REPO = Path(__file__).resolve().parents[2]  # tests/training/this file


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(iters=30, seq_len=16, **kw) -> TrainConfig:
    base = dict(iters=iters, seq_len=seq_len, batch=4, eval_every=5, eval_batches=1, save_every=4)
    return TrainConfig(**(base | kw))


def small_model(**kw) -> ModelConfig:
    return ModelConfig.paper(**({"n_ctx": 16} | kw))


def strip_timing(metrics):
    return [{k: v for k, v in m.items() if k not in TIMING_KEYS} for m in metrics]


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)


# ------------------------------------------------------------------------------ recipe


def test_recipe_defaults_are_the_papers():
    c = TrainConfig()
    assert (c.iters, c.batch, c.seq_len) == (400, 16, 1024)
    assert c.lr == 2e-3 and c.betas == [0.9, 0.95] and c.eps == 1e-8
    assert c.weight_decay == 1e-3 and not c.decay_tied_embedding and c.grad_clip is None
    assert c.schedule == "onecycle" and c.anneal == "cos"
    assert (c.warmup_frac, c.div_factor, c.final_div_factor) == (0.02, 100.0, 0.05)
    assert TrainConfig.paper() == c
    assert TrainConfig.from_dict(json.loads(c.to_json())) == c


def torch_onecycle(c: TrainConfig) -> list[float]:
    """The paper code's scheduler: torch OneCycleLR stepped once per update."""
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=c.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt,
        max_lr=c.lr,
        total_steps=c.iters,
        pct_start=c.warmup_frac,
        anneal_strategy=c.anneal,
        cycle_momentum=False,
        div_factor=c.div_factor,
        final_div_factor=c.final_div_factor,
    )
    lrs = []
    for _ in range(c.iters):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_lr_schedule_start_peak_end():
    c = TrainConfig()
    lrs = torch_onecycle(c)
    assert len(lrs) == 400
    assert lrs[0] == pytest.approx(2e-5, rel=1e-9)
    assert max(lrs) == pytest.approx(2e-3, rel=1e-12) and lrs.index(max(lrs)) == 7  # 2% of 400 - 1
    assert lrs[-1] == pytest.approx(4e-4, rel=1e-9)
    assert all(a <= b for a, b in zip(lrs[:8], lrs[1:8], strict=False))  # warm-up rises
    assert all(a >= b for a, b in zip(lrs[7:], lrs[8:], strict=False))  # then decays
    assert lr_schedule(c) == pytest.approx(lrs, rel=1e-12)  # what the trainer uses
    for other in (TrainConfig(iters=120, anneal="linear", lr=1e-2), TrainConfig(iters=30)):
        assert lr_schedule(other) == pytest.approx(torch_onecycle(other), rel=1e-12)
    assert lr_schedule(TrainConfig(iters=50))[0] == 2e-3  # 2% of 50 = 1 step: torch divides by 0
    assert lr_schedule(TrainConfig(iters=5, schedule="constant")) == [2e-3] * 5


def test_weight_decay_groups_match_the_papers_code():
    tc = TrainConfig()
    tied = MarkovTransformer(ModelConfig.paper(n_ctx=8, tie_embeddings=True))
    names = set(decay_parameter_names(tied, tc))
    assert names == {
        "blocks.0.attn.W_Q",
        "blocks.0.attn.W_K",
        "blocks.0.attn.W_V",
        "blocks.0.attn.W_O",
        "blocks.0.mlp.W_in",
        "blocks.0.mlp.W_out",
    }
    untied = MarkovTransformer(ModelConfig.paper(n_ctx=8, tie_embeddings=False))
    assert set(decay_parameter_names(untied, tc)) == names | {"unembed.W_U"}
    opt, order = make_optimizer(untied, tc)
    decayed, other = opt.param_groups
    assert decayed["weight_decay"] == 1e-3 and other["weight_decay"] == 0.0
    params = dict(untied.named_parameters())
    other_ids = {id(p) for p in other["params"]}
    for name in ("embed.W_E", "pos_embed.W_pos", "unembed.b_U", "blocks.0.ln1.w", "ln_final.w"):
        assert id(params[name]) in other_ids
    assert sorted(order) == sorted(params)
    newer = TrainConfig(decay_tied_embedding=True)
    assert "embed.W_E" in decay_parameter_names(tied, newer)


def test_train_config_validation():
    with pytest.raises(ValueError, match="unknown train config keys \\['iter'\\]"):
        TrainConfig.from_dict({"iter": 3})
    with pytest.raises(ValueError, match="lr"):
        TrainConfig(lr=float("nan"))
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="cosine")
    with pytest.raises(ValueError, match="n_ctx=16 is shorter than seq_len=32"):
        train(small_model(), BinaryChain(0.5, 0.8), tiny(seq_len=32), progress=False)


def test_derived_seeds_are_distinct_and_stable():
    seeds = {
        derive_seed(s, stream, step) for s in range(3) for stream in range(3) for step in range(5)
    }
    assert len(seeds) == 45
    assert derive_seed(0, 1, 7) == derive_seed(0, 1, 7)


def test_fused_attention_is_the_same_function():
    """Training's fused branch (the compiled kernel / SDPA) and the explicit branch give the
    same loss and gradients; a layer whose pattern is hooked takes the explicit branch."""
    for kw in (
        dict(),
        dict(n_layers=2, n_heads=2, attn_window=[1, None]),
        dict(use_attn_result=True, n_heads=4, d_model=16, attn_window=0),
    ):
        model = MarkovTransformer(ModelConfig.paper(n_ctx=32, init_range=0.4, **kw), seed=0)
        x = torch.randint(0, 2, (3, 32), generator=torch.Generator().manual_seed(1))
        model.set_fused_attention(False)
        ref_loss = model(x, return_type="loss")
        ref_grads = torch.autograd.grad(ref_loss, list(model.parameters()))
        model.set_fused_attention(True)
        loss = model(x, return_type="loss")
        grads = torch.autograd.grad(loss, list(model.parameters()))
        assert torch.allclose(loss, ref_loss, atol=1e-6)
        for g, r in zip(grads, ref_grads, strict=True):
            assert torch.allclose(g, r, atol=1e-5, rtol=1e-4)
    model = MarkovTransformer(ModelConfig.paper(n_ctx=8), seed=0)
    seen = []
    model.blocks[0].attn.hook_pattern.add_hook(lambda t, hook: seen.append(t.shape))
    model(torch.zeros(2, 8, dtype=torch.long))
    assert seen == [(2, 1, 8, 8)]


# ------------------------------------------------------------------------- seeding


def test_same_seed_same_metrics_and_weights_different_seed_differs():
    chain = BinaryChain(0.5, 0.8)
    a = train(small_model(), chain, tiny(), seed=3, progress=False)
    b = train(small_model(), chain, tiny(), seed=3, progress=False)
    c = train(small_model(), chain, tiny(), seed=4, progress=False)
    assert a.path is None and isinstance(a.model, MarkovTransformer)
    assert strip_timing(a.metrics) == strip_timing(b.metrics)
    assert same_weights(a.model, b.model)
    assert not same_weights(a.model, c.model)
    assert strip_timing(a.metrics) != strip_timing(c.metrics)
    assert a["final_eval_loss"] == b["final_eval_loss"] != c["final_eval_loss"]


def test_metrics_have_the_documented_fields(tmp_path):
    res = train(
        small_model(),
        BinaryChain(0.5, 0.8),
        tiny(iters=12),
        seed=0,
        out_dir=tmp_path / "r",
        progress=False,
    )
    steps = [m["step"] for m in res.metrics]
    assert steps == [0, 5, 10, 12]
    last = res.metrics[-1]
    for key in (
        "eval_loss",
        "gap_entropy",
        "gap_unigram",
        "kl",
        "kl_unigram",
        "rel_excess",
        "rel_unigram",
        "dependence",
        "accuracy",
        "p_hat",
        "q_hat",
        "train_loss",
        "lr",
        "tokens_seen",
        "wall_seconds",
        "tokens_per_s",
    ):
        assert key in last, key
    assert last["gap_entropy"] == pytest.approx(last["eval_loss"] - res["entropy_rate"])
    assert last["gap_unigram"] == pytest.approx(last["eval_loss"] - res["unigram_loss"])
    assert last["tokens_seen"] == 12 * 4 * 16
    assert last["lr"] == pytest.approx(TrainConfig(iters=12).lr_at(11))
    assert read_metrics(tmp_path / "r" / "metrics.jsonl") == res.metrics
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    for key in (
        "final_eval_loss",
        "entropy_rate",
        "unigram_loss",
        "verdict",
        "steps",
        "seed",
        "wall_seconds",
        "plateau_exit_step",
        "plateau_steps",
    ):
        assert key in summary, key
    assert summary["entropy_rate"] == pytest.approx(0.619, abs=1e-3)
    assert summary["unigram_loss"] == pytest.approx(0.666, abs=1e-3)
    # what it was trained on: the fingerprint bit-identical claims are scoped to, with the
    # attention kernel's build and source hash
    assert summary["machine"] == fused_attention.fingerprint()
    if fused_attention.kernel_status() == "loaded":
        assert "source " in summary["machine"]["kernel"]


# --------------------------------------------------------------------------- resume


def test_resume_after_pause_and_after_crash_is_bit_identical(tmp_path, monkeypatch):
    chain, mc, tc = BinaryChain(0.5, 0.8), small_model(), tiny(iters=30, save_every=3)
    ref = train(mc, chain, tc, seed=1, out_dir=tmp_path / "ref", progress=False)

    paused = train(mc, chain, tc, seed=1, out_dir=tmp_path / "pause", progress=False, stop_at=13)
    assert paused["status"] == "paused" and not (tmp_path / "pause" / "summary.json").exists()
    resumed = train(mc, chain, tc, seed=1, out_dir=tmp_path / "pause", progress=False, resume=True)
    assert same_weights(ref.model, resumed.model)
    assert strip_timing(load_run(tmp_path / "pause").metrics()) == strip_timing(ref.metrics)

    # a crash between two resume checkpoints (latest at 18, crash during update 21)
    import training.trainer.loop as loop  # where the loop looks _train_step up

    real_step = loop._train_step
    calls = {"n": 0}

    def crashing_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 21:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "_train_step", crashing_step)
    with pytest.raises(KeyboardInterrupt):
        train(mc, chain, tc, seed=1, out_dir=tmp_path / "crash", progress=False)
    monkeypatch.setattr(loop, "_train_step", real_step)
    with pytest.raises(FileExistsError, match="unfinished run"):
        train(mc, chain, tc, seed=1, out_dir=tmp_path / "crash", progress=False)
    with pytest.raises(ValueError, match="train.lr"):
        train(
            mc,
            chain,
            tiny(iters=30, save_every=3, lr=1e-3),
            seed=1,
            out_dir=tmp_path / "crash",
            progress=False,
            resume=True,
        )
    done = train(mc, chain, tc, seed=1, out_dir=tmp_path / "crash", progress=False, resume=True)
    assert same_weights(ref.model, done.model)
    run = load_run(tmp_path / "crash")
    assert strip_timing(run.metrics()) == strip_timing(ref.metrics)
    assert same_weights(run.model(device="cpu"), ref.model)
    assert not (tmp_path / "crash" / "checkpoints" / "latest").exists()
    # resume on a finished run only reads it
    again = train(mc, chain, tc, seed=1, out_dir=tmp_path / "crash", progress=False, resume=True)
    assert again["final_eval_loss"] == ref["final_eval_loss"]


def test_sigkill_mid_run_then_resume_is_bit_identical(tmp_path):
    """`markov-lens train` killed with SIGKILL once a checkpoint exists, then resumed, ends
    with the weights of an uninterrupted run, bit for bit."""
    cfg = {
        "chain": {"p": 0.5, "q": 0.8},
        "model": {"layers": 1, "d_model": 8},
        "train": {
            "iters": 400,
            "seq_len": 16,
            "batch": 4,
            "eval_every": 50,
            "eval_batches": 1,
            "save_every": 5,
        },
        "seed": 2,
    }
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    run_dir = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "markov_lens.cli",
            "train",
            "--config",
            str(path),
            "--out",
            str(run_dir),
            "--threads",
            "1",
            "--no-progress",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    marker = run_dir / "checkpoints" / "step_000016"
    deadline = time.time() + 180
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert marker.exists() and not (run_dir / "summary.json").exists(), "not killed mid-run"

    rc = build_run_config(cfg)
    ref = train(rc.model, rc.chain, rc.train, seed=rc.seed, progress=False)
    with pytest.warns(UserWarning, match=r"took over a stale lock: its holder PID \d+"):
        done = train(
            rc.model, rc.chain, rc.train, seed=rc.seed, out_dir=run_dir, resume=True, progress=False
        )
    assert done["status"] == "finished"
    assert same_weights(ref.model, done.model)
    assert same_weights(load_run(run_dir).model(device="cpu"), ref.model)
    assert strip_timing(load_run(run_dir).metrics()) == strip_timing(ref.metrics)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    absurd = tiny(iters=40, lr=1e30, schedule="constant")
    with pytest.raises(TrainingDiverged, match="became nan at step") as info:
        train(small_model(), BinaryChain(0.5, 0.8), absurd, out_dir=tmp_path / "r", progress=False)
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["verdict"] == "neither"
    kept = Path(summary["last_good_checkpoint"])
    assert str(kept) in str(info.value)
    run = load_run(tmp_path / "r")
    assert run.checkpoint_path() == kept and run.checkpoint_steps()[-1] < summary["diverged_step"]
    model = run.model(device="cpu")
    x = BinaryChain(0.5, 0.8).sample(4, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert math.isfinite(float(model(x, return_type="loss")))
    with pytest.raises(FileExistsError, match="finished run"):
        train(small_model(), BinaryChain(0.5, 0.8), absurd, out_dir=tmp_path / "r", progress=False)


def test_refuses_to_overwrite_a_finished_run_without_force(tmp_path):
    chain = BinaryChain(0.2, 0.3)
    first = train(small_model(), chain, tiny(iters=5), out_dir=tmp_path / "r", progress=False)
    before = (tmp_path / "r" / "summary.json").read_text()
    with pytest.raises(FileExistsError, match="finished run"):
        train(small_model(), chain, tiny(iters=5), seed=9, out_dir=tmp_path / "r", progress=False)
    assert (tmp_path / "r" / "summary.json").read_text() == before
    (tmp_path / "r" / "notes.txt").write_text("mine")
    forced = train(
        small_model(),
        chain,
        tiny(iters=5),
        seed=9,
        out_dir=tmp_path / "r",
        force=True,
        progress=False,
    )
    assert forced["seed"] == 9 and first["seed"] == 0
    assert (tmp_path / "r" / "notes.txt").read_text() == "mine"  # force removes only run files


# -------------------------------------------------------------------------- verdicts


def test_verdict_on_synthetic_measures():
    assert verdict(0.05, 1.1, 0.97, gap=0.05) == "bigram"
    assert verdict(1.0, 0.01, 0.01, gap=0.05) == "unigram"
    assert verdict(0.5, 0.4, 0.5, gap=0.05) == "neither"
    assert verdict(0.05, 1.0, 0.3, gap=0.05) == "neither"  # low loss but no dependence
    assert verdict(1.16, 0.16, 0.0, gap=0.13) == "neither"  # uniform prediction, not pi
    assert verdict(None, None, None, gap=0.05) == "neither"
    assert verdict(None, None, None, gap=0.0, kl=1e-4) == "bigram"  # p + q = 1: i.i.d.
    assert verdict(None, None, None, gap=0.0, kl=0.05) == "neither"
    strict = VerdictRule(bigram_max_excess=0.01)
    assert verdict(0.05, 1.1, 0.97, gap=0.05, rule=strict) == "neither"


def test_plateau_stats_on_synthetic_curves():
    steps = list(range(0, 90, 10))
    escape = [1.6, 1.2, 1.02, 1.0, 0.99, 1.05, 0.7, 0.3, 0.05]
    got = plateau_stats(steps, escape)
    assert got == {"plateau_exit_step": 70, "plateau_steps": 40, "plateau_first_step": 20}
    stuck = [1.6, 1.0, 1.0, 1.0]
    assert plateau_stats(steps[:4], stuck)["plateau_exit_step"] is None
    assert plateau_stats(steps[:4], stuck)["plateau_steps"] == 20  # the last eval ends the run
    direct = [1.5, 0.4, 0.1]  # falls through without sitting on the plateau
    assert plateau_stats(steps[:3], direct) == {
        "plateau_exit_step": 10,
        "plateau_steps": 0,
        "plateau_first_step": None,
    }
    assert plateau_stats([0, 10], [0.3, 0.1])["plateau_exit_step"] is None  # never above
    assert plateau_stats([0, 10, 20, 30], [1.2, 0.4, 0.8, 0.1])["plateau_exit_step"] == 10
    with pytest.raises(ValueError):
        plateau_stats([0, 1], [1.0])
    # the loss passes the unigram loss while the prediction is not the marginal: no plateau
    passing = plateau_stats([0, 10, 20], [0.93, 0.5, 0.1], rel_unigram=[0.14, 0.2, 0.9])
    assert passing["plateau_steps"] == 0 and passing["plateau_first_step"] is None
    sitting = plateau_stats([0, 10, 20], [1.05, 0.98, 0.1], rel_unigram=[0.3, 0.02, 0.9])
    assert sitting == {"plateau_exit_step": 20, "plateau_steps": 10, "plateau_first_step": 10}
    metrics = [
        {"step": s, "rel_excess": r, "rel_unigram": 1.0, "dependence": 1.0, "kl": 0.0}
        for s, r in zip(steps, escape, strict=True)
    ]
    assert summarise_metrics(metrics, gap=0.05)["verdict"] == "bigram"


def test_untied_model_learns_the_kernel_on_short_sequences():
    res = train(
        ModelConfig.paper(n_ctx=64, tie_embeddings=False),
        BinaryChain(0.2, 0.3),
        TrainConfig(iters=80, seq_len=64, eval_every=20),
        seed=0,
        progress=False,
    )
    assert res["verdict"] == "bigram"
    assert res["final_rel_excess"] < 0.1 and res["final_dependence"] > 0.8
    assert res["p_hat"] == pytest.approx(0.2, abs=0.05) and res["q_hat"] == pytest.approx(
        0.3, abs=0.05
    )
    assert res["plateau_exit_step"] is not None


def test_theta_pi_init_with_zero_lr_is_unigram():
    chain = BinaryChain(0.5, 0.8)
    # batch 16: 240 evaluation tokens, above the verdict's minimum sample (200)
    res = train(
        small_model(init="theta_pi"), chain, tiny(iters=4, lr=0.0, batch=16), progress=False
    )
    assert res["verdict"] == "unigram"
    assert res["final_dependence"] == pytest.approx(0.0, abs=1e-9)
    assert res["final_rel_unigram"] == pytest.approx(0.0, abs=1e-9)
    pi_1 = 0.5 / 1.3
    assert res["p_hat"] == pytest.approx(pi_1, abs=1e-6) and res["q_hat"] == pytest.approx(
        1 - pi_1, abs=1e-6
    )
    assert res["plateau_exit_step"] is None


def test_other_chain_families_train_and_get_references():
    lag = train(small_model(), KthOrderChain.lag(2, 0.2, 0.3), tiny(iters=6), progress=False)
    assert lag["references"]["order_losses"][2] == pytest.approx(lag["entropy_rate"])
    assert len(lag.metrics[-1]["kernel_hat"]) == 4  # 2^2 contexts
    # 4 eval batches: 240 predicted tokens, above the verdicts' minimum sample (200)
    ic = train(
        small_model(), InContextChain(states=2), tiny(iters=6, eval_batches=4), progress=False
    )
    refs = ic["references"]
    assert refs["kind"] == "in_context" and refs["optimal_loss"] < refs["unigram_loss"]
    assert ic["verdict"] == "neither" and ic["final_rel_excess"] > 0.2  # 6 updates: not learnt
    s5 = train(
        small_model(d_vocab=5), KthOrderChain.symmetric(5, 0.1), tiny(iters=6), progress=False
    )
    assert s5["entropy_rate"] == pytest.approx(0.464, abs=1e-3)


# ----------------------------------------------------------------------------- runs


def test_load_run(tmp_path):
    res = train(
        small_model(),
        BinaryChain(0.5, 0.8),
        tiny(iters=9),
        seed=5,
        out_dir=tmp_path / "r",
        progress=False,
    )
    run = load_run(tmp_path / "r")
    assert run.seed == 5 and run.chain == BinaryChain(0.5, 0.8) and run.path == tmp_path / "r"
    assert run.train_config == tiny(iters=9) and run.model_config == small_model()
    assert run.checkpoint_steps() == [0, 1, 2, 4, 8, 9]
    assert run.checkpoint_path(4).name == "step_000004"
    assert same_weights(run.model(device="cpu"), res.model)
    assert not same_weights(run.model(step=0, device="cpu"), res.model)
    assert run.summary()["seed"] == 5 and run.finished
    assert run.metrics() == res.metrics
    with pytest.raises(ValueError, match="no checkpoint at step 3"):
        run.checkpoint_path(3)
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        load_run(tmp_path)
    train(
        small_model(),
        BinaryChain(0.5, 0.8),
        tiny(iters=9),
        out_dir=tmp_path / "p",
        progress=False,
        stop_at=3,
    )
    with pytest.raises(FileNotFoundError, match="has not finished"):
        load_run(tmp_path / "p").summary()


def test_a_run_directory_is_trained_by_one_process_at_a_time(tmp_path, capsys):
    """Two `train --resume --out R` at once interleaved their metrics in v1; now the second
    refuses, naming the holder, and writes nothing."""
    from markov_lens.cli import main
    from training.locks import DirectoryLocked, lock_directory

    run_dir = tmp_path / "r"
    with lock_directory(run_dir, purpose="training run"):
        with pytest.raises(DirectoryLocked, match="locked"):
            train(
                small_model(), BinaryChain(0.5, 0.8), tiny(iters=2), out_dir=run_dir, progress=False
            )
        code = main(
            [
                "train",
                "--p",
                "0.5",
                "--q",
                "0.8",
                "--iters",
                "2",
                "--seq-len",
                "16",
                "--out",
                str(run_dir),
                "--no-progress",
            ]
        )
        assert code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{run_dir} is locked by this process" in err[0]
        assert sorted(p.name for p in run_dir.iterdir()) == [".markov-lens.lock"]
    done = train(
        small_model(), BinaryChain(0.5, 0.8), tiny(iters=2), out_dir=run_dir, progress=False
    )
    assert done["status"] == "finished" and not (run_dir / ".markov-lens.lock").exists()
    file_dir = tmp_path / "f"
    file_dir.write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        train(small_model(), BinaryChain(0.5, 0.8), tiny(iters=2), out_dir=file_dir, progress=False)


def test_order_k_runs_are_labelled_with_the_order_they_reach():
    """Constructed predictors on order-2 chains: optimal, first-order (which v1 called
    "bigram" when it missed less than 20% of the gap), marginal, uniform."""
    from training.chains import KthOrderChain
    from training.references import order_j_loss
    from training.verdicts import order_reached, summarise_metrics

    L = [0.70, 0.52, 0.50]  # first order misses 10% of the gap L0 - L2
    assert order_reached(0.0, L)["order_label"] == "order-2 (optimal)"
    first = order_reached(L[1] - L[2], L)
    assert first["order_label"] == "order-1" and first["order_reached"] == 1
    assert first["order_excess"] == pytest.approx([L[1] - L[0], 0.0, L[1] - L[2]])
    assert order_reached(L[0] - L[2], L)["order_label"] == "marginal"
    assert order_reached(math.log(2) - L[2], L)["order_label"] == "marginal"  # 0.69 vs 0.70
    assert order_reached(0.4, L)["order_label"] == "neither"  # worse than the marginal
    assert order_reached(None, L)["order_label"] == "neither"
    # the summary's verdict: the first-order predictor passes v1's rule (r = 0.1) but is not
    # "bigram" on an order-2 chain
    gap = L[0] - L[2]
    rec = {"step": 400, "kl": L[1] - L[2], "rel_excess": 0.1, "rel_unigram": 0.9, "dependence": 0.9}
    judged = summarise_metrics([rec], gap, order_losses=L)
    assert judged["verdict"] == "neither" and judged["order_label"] == "order-1"
    opt = summarise_metrics([rec | {"kl": 0.001, "rel_excess": 0.05}], gap, order_losses=L)
    assert opt["verdict"] == "bigram" and opt["order_label"] == "order-2 (optimal)"
    # the paper's lag-2 chain: order 1 adds nothing (L1 = L0), so it is never the label
    lag = [order_j_loss(KthOrderChain.lag(2, 0.2, 0.3), j) for j in range(3)]
    assert lag[0] == pytest.approx(lag[1])
    assert order_reached(lag[1] - lag[2], lag)["order_label"] == "marginal"
    assert order_reached(0.0, lag)["order_label"] == "order-2 (optimal)"
    # first-order chains: order-1 is the familiar bigram rule (r <= 0.2)
    assert order_reached(0.019, [0.7, 0.6])["order_label"] == "order-1 (optimal)"
    assert order_reached(0.021, [0.7, 0.6])["order_label"] == "neither"


def test_force_clears_the_old_models_analyses(tmp_path):
    run_dir = tmp_path / "r"
    train(small_model(), BinaryChain(0.5, 0.8), tiny(iters=2), out_dir=run_dir, progress=False)
    (run_dir / "interp").mkdir()
    (run_dir / "interp" / "explain.json").write_text("{}")  # of the model about to be replaced
    train(
        small_model(),
        BinaryChain(0.5, 0.8),
        tiny(iters=2),
        out_dir=run_dir,
        progress=False,
        force=True,
    )
    assert not (run_dir / "interp").exists() and (run_dir / "summary.json").exists()


def test_a_shared_eval_seed_evaluates_every_seed_on_the_same_tokens():
    from training.trainer import EvalSet

    cpu = torch.device("cpu")
    chain = BinaryChain(0.5, 0.8)
    own = [EvalSet(chain, tiny(), s, cpu).tokens[0] for s in (0, 1)]
    assert not torch.equal(own[0], own[1])  # v1: each seed its own held-out batches
    shared = [EvalSet(chain, tiny(eval_seed=7), s, cpu).tokens[0] for s in (0, 1)]
    assert torch.equal(shared[0], shared[1])
    a = train(small_model(), chain, tiny(iters=4, eval_seed=7), seed=0, progress=False)
    assert a.metrics[-1]["step"] == 4  # trains and evaluates with it
    with pytest.raises(ValueError, match="eval_seed must be an integer >= 0"):
        tiny(eval_seed=-1)


def test_a_run_saved_before_a_config_field_existed_still_resumes(tmp_path):
    """config.json of a v1 run lacks token_embedding and eval_seed: their defaults apply."""
    import json as _json

    run_dir = tmp_path / "r"
    tc = tiny(iters=6, save_every=2)
    train(small_model(), BinaryChain(0.5, 0.8), tc, out_dir=run_dir, progress=False, stop_at=3)
    cfg = _json.loads((run_dir / "config.json").read_text())
    del cfg["model"]["token_embedding"], cfg["train"]["eval_seed"]
    (run_dir / "config.json").write_text(_json.dumps(cfg))
    done = train(
        small_model(), BinaryChain(0.5, 0.8), tc, out_dir=run_dir, progress=False, resume=True
    )
    assert done["status"] == "finished"
