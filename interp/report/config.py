"""What the report computes: ``ReportConfig`` (sizes of every analysis, JSON-able)."""

from __future__ import annotations

from dataclasses import dataclass

from training.jsonconfig import JsonConfig


@dataclass
class ReportConfig(JsonConfig):
    """What the report computes (JSON-able). seed, n_seqs, seq_len (None: min(128, n_ctx)):
    the held-out analysis inputs; attention_positions: positions in the attention heatmap;
    probes (probe_seqs x probe_positions); patching (patching_seqs sequences of the analysis
    length, at most 32 tokens); landscape: Hessian verdicts at the trained checkpoint and at
    theta_pi from landscape_sequences sequences of landscape_seq_len tokens (None:
    min(32, n_ctx)), landscape_groups groups and landscape_iters Lanczos steps: a summary
    sized to take seconds; ``markov-lens landscape`` runs the full analysis."""

    config_name = "report config"

    seed: int = 0
    n_seqs: int = 32
    seq_len: int | None = None
    attention_positions: int = 24
    probes: bool = True
    probe_seqs: int = 64
    probe_positions: int = 16
    patching: bool = True
    patching_seqs: int = 64
    landscape: bool = True
    landscape_sequences: int = 128
    landscape_seq_len: int | None = None
    landscape_groups: int = 8
    landscape_iters: int = 20

    def __post_init__(self) -> None:
        for name in (
            "n_seqs",
            "attention_positions",
            "probe_seqs",
            "probe_positions",
            "patching_seqs",
            "landscape_sequences",
            "landscape_groups",
            "landscape_iters",
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        for name in ("seq_len", "landscape_seq_len"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 2):
                raise ValueError(f"{name} must be an integer >= 2 or None, got {v!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
