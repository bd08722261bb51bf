"""What the report computes: ``ReportConfig`` (sizes of every analysis, JSON-able)."""

from __future__ import annotations

from dataclasses import dataclass

from training.jsonconfig import JsonConfig


@dataclass
class ReportConfig(JsonConfig):
    """What the report computes (JSON-able). Every None takes the sample of
    ``interp.measurement.MeasurementSpec``, the one ``explain`` and ``landscape RUN`` use,
    so that the three report the same flip ratio, head scores and Hessian verdict on a
    checkpoint. seed: of every analysis sample; n_seqs, seq_len (None: the spec's flip
    sample, 64 sequences of the training length capped at 128): the held-out predictions,
    attention and head scores; attention_positions: positions in the attention heatmap;
    probes (probe_seqs x probe_positions); patching (patching_seqs sequences of the analysis
    length); landscape: Hessian verdicts at the trained checkpoint and at theta_pi from
    landscape_sequences sequences of landscape_seq_len tokens (None: the spec's Hessian
    sample, 32768 tokens' worth of the training length), landscape_iters Lanczos steps
    (None: LandscapeConfig's 80), landscape_groups gradient groups (theta_pi's gradient
    noise)."""

    config_name = "report config"

    seed: int = 0
    n_seqs: int | None = None
    seq_len: int | None = None
    attention_positions: int = 24
    probes: bool = True
    probe_seqs: int = 64
    probe_positions: int = 16
    patching: bool = True
    patching_seqs: int | None = None
    landscape: bool = True
    landscape_sequences: int | None = None
    landscape_seq_len: int | None = None
    landscape_groups: int = 8
    landscape_iters: int | None = None

    def __post_init__(self) -> None:
        for name in ("attention_positions", "probe_seqs", "probe_positions", "landscape_groups"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        for name in ("n_seqs", "patching_seqs", "landscape_sequences", "landscape_iters"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {v!r}")
        for name in ("seq_len", "landscape_seq_len"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 2):
                raise ValueError(f"{name} must be an integer >= 2 or None, got {v!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
