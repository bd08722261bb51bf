"""The paper's claims, checked per seed: Claim, check_claims (how many seeds each held for,
with a Wilson 95% interval and a status) and claims_table (their markdown table)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from training.experiments.tables import finished_runs
from training.stats import claim_status, fmt_fraction, wilson_interval
from training.sweeps import markdown_table
from training.verdicts import VERDICTS


@dataclass
class Claim:
    """A statement of the paper checked per seed: `select` picks the runs it is about and
    `expected` lists the verdicts under which it holds (or `holds` decides from the row)."""

    text: str
    select: Callable[[dict], bool]
    expected: tuple[str, ...] = ()
    holds: Callable[[dict], bool] | None = None

    def check(self, row: dict) -> bool:
        return self.holds(row) if self.holds is not None else row.get("verdict") in self.expected


def check_claims(rows: list[dict], claims: list[Claim]) -> list[dict[str, Any]]:
    out = []
    for claim in claims:
        chosen = [r for r in finished_runs(rows) if claim.select(r)]
        held = sum(claim.check(r) for r in chosen)
        verdicts = {v: sum(r.get("verdict") == v for r in chosen) for v in VERDICTS}
        lo, hi = wilson_interval(held, len(chosen))
        out.append(
            {
                "claim": claim.text,
                "expected": "/".join(claim.expected) if claim.expected else "see claim",
                "held": held,
                "runs": len(chosen),
                "interval": [lo, hi],
                "status": claim_status(held, len(chosen)),
                "verdicts": verdicts,
            }
        )
    return out


def claims_table(claims: list[dict]) -> str:
    rows = [
        {
            "claim": c["claim"],
            "held for (seeds, Wilson 95%)": fmt_fraction(c["held"], c["runs"]),
            "status": c.get("status") or claim_status(c["held"], c["runs"]),
            "verdicts (bigram/unigram/neither)": "{bigram}/{unigram}/{neither}".format(
                **c["verdicts"]
            ),
        }
        for c in claims
    ]
    return markdown_table(rows)
