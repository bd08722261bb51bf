"""markov-lens's trainer reproduces the authors' code's per-step training losses (issue #26),
without the authors' code: tests/benchmarks/fixtures/authors_losses.json holds the authors'
losses (Bond1995/Markov, Markov-LLM/src main.main on a CPU, float32) from markov-lens's init
for a seed on markov-lens's batches, written by benchmarks/authors_side_by_side.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks.authors_side_by_side import BATCHES_HOW, batches_sha256, per_step_losses
from training.chains import BinaryChain
from training.config import ModelConfig
from training.recipe import TrainConfig
from training.stacked import Member
from training.trainer import member_batches, train
from training.trainer.loop import initial_model

pytestmark = pytest.mark.usefixtures("one_thread")

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "authors_losses.json"
TOLERANCE = 1e-5  # nats; measured 1.2e-7 when the fixture was written


@pytest.fixture(scope="module")
def fix() -> dict:
    return json.loads(FIXTURE.read_text())


def setting(fix: dict) -> tuple[ModelConfig, BinaryChain, TrainConfig, int]:
    mc = ModelConfig.from_dict(fix["model_config"])
    tc = TrainConfig.from_dict(fix["train_config"])
    return mc, BinaryChain(fix["chain"]["p"], fix["chain"]["q"]), tc, fix["seed"]


def test_fixture_is_small_and_describes_its_batches(fix):
    assert FIXTURE.stat().st_size < 1 << 20
    assert fix["batches"]["how"] == BATCHES_HOW
    mc, chain, tc, seed = setting(fix)
    assert tc.targets == "authors" and tc.precision == "fp32" and tc.eval_every == 1
    assert mc.tie_embeddings and len(fix["authors_losses"]) == tc.iters == 400


def test_trainer_reproduces_the_authors_losses(fix):
    mc, chain, tc, seed = setting(fix)
    cpu = torch.device("cpu")
    # the fixture's init and batches are the trainer's own for this seed
    init = initial_model(Member(mc, chain, seed), cpu)
    for name, p in init.named_parameters():
        want = torch.tensor(fix["initial_weights"][name], dtype=p.dtype)
        assert torch.equal(p.detach(), want), f"{name}: the init changed; rewrite the fixture"
    batches = [member_batches([chain], [seed], s, tc, cpu)[0] for s in range(tc.iters)]
    assert batches_sha256(batches) == fix["batches"]["sha256"], "the training batches changed"
    ours = per_step_losses(train(mc, chain, tc, seed=seed, progress=False))
    theirs = fix["authors_losses"]
    assert len(ours) == len(theirs)
    diffs = [abs(a - b) for a, b in zip(ours, theirs, strict=True)]
    worst = max(range(len(diffs)), key=diffs.__getitem__)
    assert diffs[worst] < TOLERANCE, f"step {worst}: {ours[worst]} vs the authors' {theirs[worst]}"
    # the curve leaves the unigram plateau (ln 2 -> about 0.62), so the check covers the escape
    assert theirs[0] > 0.69 and theirs[-1] < 0.63
