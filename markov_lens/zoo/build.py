"""Regenerate the zoo's runs (markov_lens/zoo/trained-runs/): ``python -m markov_lens.zoo.build``.

Every run is seeded and trained on one CPU thread, so the same files come out on the same
machine (``BUILT_ON.json`` records which: training.machine.fingerprint); on another CPU or
kernel build they agree within float32 rounding. Each keeps only its last checkpoint
(checkpoints_per_octave 0) to stay small.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from markov_lens.zoo import NAMES, ROOT

BUILT_ON = "BUILT_ON.json"  # the machine the files came from (training.machine.fingerprint)


def build(names: tuple[str, ...] = NAMES, root: Path = ROOT) -> None:
    """Train (or place) each named run into ``root``/NAME, replacing what is there."""
    from interp.landscape import theta_pi_model
    from training.chains import BinaryChain, InContextChain, KthOrderChain
    from training.checkpoints import save_checkpoint
    from training.config import ModelConfig
    from training.fused_attention import fingerprint
    from training.options import RunConfig
    from training.recipe import TrainConfig
    from training.runs import CHECKPOINTS, CONFIG, step_dir_name, write_json_atomic
    from training.trainer import train

    torch.set_num_threads(1)
    sticky = BinaryChain(0.5, 0.8)

    def paper(seq_len: int, iters: int, **kw) -> TrainConfig:
        return TrainConfig.paper(
            iters=iters, seq_len=seq_len, checkpoints_per_octave=0, save_every=0, device="cpu", **kw
        )

    def in_context(n_layers: int) -> tuple:
        """The in-context pair: binary chains, a Dirichlet(1) kernel per sequence; attention
        only, untied, no LayerNorm (with it, layer 0 blurs over recent tokens instead of
        forming a previous-token head), d 32, length 128, constant lr 1e-2, 3000 steps."""
        cfg = ModelConfig.paper(
            n_ctx=128,
            n_layers=n_layers,
            d_model=32,
            attn_only=True,
            normalization_type=None,
            tie_embeddings=False,
        )
        tc = TrainConfig(
            iters=3000,
            batch=64,
            seq_len=128,
            lr=1e-2,
            schedule="constant",
            eval_every=100,
            eval_batches=4,
            save_every=0,
            device="cpu",
            checkpoints_per_octave=0,
        )
        return cfg, InContextChain(2, 1), tc

    recipes = {
        "tied-p0.5-q0.8": (ModelConfig.paper(n_ctx=128), sticky, paper(128, 400)),
        "untied-p0.5-q0.8": (
            ModelConfig.paper(n_ctx=128, tie_embeddings=False), sticky, paper(128, 400)
        ),
        "in-context-2layer": in_context(2),
        "in-context-1layer": in_context(1),
        "lag2-window2": (
            ModelConfig.paper(n_ctx=128, attn_window=2),
            KthOrderChain.lag(2, 0.2, 0.3),
            paper(128, 600),
        ),
    }  # fmt: skip
    for name in names:
        out = Path(root) / name
        if out.exists():
            shutil.rmtree(out)
        if name == "theta-pi-p0.5-q0.8":
            cfg = ModelConfig.paper(n_ctx=128)
            model = theta_pi_model(cfg, sticky, seed=0)
            run = RunConfig(model=cfg, chain=sticky, train=paper(128, 400), seed=0)
            out.mkdir(parents=True)
            write_json_atomic(out / CONFIG, run.to_dict())
            save_checkpoint(out / CHECKPOINTS / step_dir_name(0), model, {"step": 0, "seed": 0})
        else:
            cfg, chain, tc = recipes[name]
            train(cfg, chain, tc, seed=0, out_dir=out, progress=False)
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        print(f"{name}: {out} ({size / 1024:.0f} KiB)")
    write_json_atomic(Path(root) / BUILT_ON, fingerprint())


if __name__ == "__main__":
    build()
