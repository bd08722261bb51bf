"""What ``compare`` computes and on which inputs: ``ComparisonConfig``."""

from __future__ import annotations

from dataclasses import dataclass

from training.jsonconfig import JsonConfig


@dataclass
class ComparisonConfig(JsonConfig):
    """What ``compare`` computes and on which inputs (JSON-able).

    n_seqs sequences of seq_len tokens (None: min(128, both models' n_ctx)) drawn from the
    chain of A (``input_chain`` "a") or B ("b") with ``seed`` (the trainer's evaluation
    stream, ``training.trainer.EvalSet``). attention_positions: positions shown in the
    attention heatmaps (first sequence). cka_rows: at most this many (sequence, position)
    rows enter CKA (a seeded subset). probes: probe tables (``probe_targets``,
    ``probe_components``: None = ["x_n", "next_prob"] (+ "icl_bigram" in context) on the
    "resid" group; probe_seqs sequences, probe_positions positions each). patching: the
    activation-patching tables (``interp.patching``).
    """

    config_name = "comparison config"

    n_seqs: int = 32
    seq_len: int | None = None
    seed: int = 0
    input_chain: str = "a"
    attention_positions: int = 24
    cka_rows: int = 4096
    probes: bool = True
    probe_targets: list[str] | None = None
    probe_components: list[str] | None = None
    probe_seqs: int = 64
    probe_positions: int = 16
    patching: bool = True

    def __post_init__(self) -> None:
        for name in ("n_seqs", "attention_positions", "cka_rows", "probe_seqs", "probe_positions"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if self.seq_len is not None and (
            isinstance(self.seq_len, bool) or not isinstance(self.seq_len, int) or self.seq_len < 2
        ):
            raise ValueError(f"seq_len must be an integer >= 2 or None, got {self.seq_len!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        if self.input_chain not in ("a", "b"):
            raise ValueError(f"input_chain must be 'a' or 'b', got {self.input_chain!r}")
