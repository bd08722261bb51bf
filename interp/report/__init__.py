"""A one-page, self-contained HTML report of a run.

``write_report(run_dir)`` writes RUN_DIR/report.html: the run's configuration, training
curves with the reference losses, the verdict, predicted transition probabilities, attention
patterns and head scores, activation patching with the mechanistic verdict, probes, and a
landscape summary (Hessian verdicts at the trained checkpoint and at theta_pi).
Every figure is embedded as a base64 PNG and the page holds no script and no link, so it
renders offline from a single file (``markov-lens report RUN_DIR``).

Each analysis calls the module that owns it: ``interp.compare`` (behaviour and transitions on
held-out inputs), ``interp.attention`` / ``interp.heads``, ``interp.explain`` (patching,
direct paths), ``probes.sweeps`` and ``interp.landscape``; a section whose analysis does not apply (e.g.
theta_pi of an in-context chain) says so instead of failing the whole page.

One module per part; each imports only modules listed before it (never this package's
re-exports), so there are no import cycles:

- ``config``: ReportConfig;
- ``html``: the building blocks (CSS, figure_data_uri, img, table, plain, kv_table,
  error_note, page);
- ``sections``: the sections every page has (section_config, section_verdict,
  section_behaviour, section_attention, analysis_sample);
- ``optional_sections``: the ones ReportConfig can turn off (section_patching, section_probes,
  section_landscape);
- ``build``: build_report, write_report (REPORT, the default file name).

Every public name is re-exported here.
"""

from interp.report.build import REPORT, build_report, write_report
from interp.report.config import ReportConfig
from interp.report.html import CSS, error_note, figure_data_uri, img, kv_table, page, plain, table
from interp.report.optional_sections import (
    section_landscape,
    section_patching,
    section_probes,
)
from interp.report.sections import (
    analysis_sample,
    section_attention,
    section_behaviour,
    section_config,
    section_verdict,
)

__all__ = [
    "CSS",
    "REPORT",
    "ReportConfig",
    "analysis_sample",
    "build_report",
    "error_note",
    "figure_data_uri",
    "img",
    "kv_table",
    "page",
    "plain",
    "section_attention",
    "section_behaviour",
    "section_config",
    "section_landscape",
    "section_patching",
    "section_probes",
    "section_verdict",
    "table",
    "write_report",
]
