"""The page's building blocks: figures as base64 PNG data URIs, tables, and the document
itself (inline CSS, no script, no external resource)."""

from __future__ import annotations

import base64
import html
import io
import json
from typing import Any

from interp.compare.plots import fmt

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1150px; color: #222; line-height: 1.4; padding: 0 1em; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em;
       margin-top: 1.8em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.88em; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
img { max-width: 100%; height: auto; display: block; margin: 0.6em 0; }
.badge { display: inline-block; padding: 2px 10px; border-radius: 10px; color: white;
         font-weight: bold; }
.bigram { background: #2e7d32; } .unigram { background: #c62828; }
.neither { background: #757575; } .note { color: #555; font-size: 0.9em; }
.grid { display: flex; flex-wrap: wrap; gap: 1.5em; } .grid > div { flex: 1 1 300px; }
"""


def figure_data_uri(fig, dpi: int = 100) -> str:
    """A matplotlib figure as a ``data:image/png;base64,...`` URI (closed when from pyplot)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    _close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _close(fig) -> None:
    import matplotlib.pyplot as plt

    if getattr(fig, "number", None) in plt.get_fignums():  # made by pyplot: release it
        plt.close(fig)


def img(fig, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="{figure_data_uri(fig)}">'


def table(header: list[str], rows: list[list[Any]]) -> str:
    """An HTML table; numbers through ``interp.compare.plots.fmt``, text escaped."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(f"<td>{html.escape(fmt(v) if not isinstance(v, str) else v)}</td>" for v in row)
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def plain(v: Any) -> str:
    """A config value in words: "-" for unset (None), JSON for lists and dicts."""
    if v is None:
        return "-"
    if isinstance(v, (list, dict, tuple)):
        return json.dumps(v)
    return fmt(v) if isinstance(v, float) else str(v)


def kv_table(d: dict[str, Any]) -> str:
    return table(["field", "value"], [[k, plain(v)] for k, v in d.items()])


def page(title: str, sections: list[tuple[str, str]], header: str = "") -> str:
    """A complete HTML document: inline CSS, no script, no external resource."""
    body = "\n".join(
        f'<section id="{html.escape(_anchor(name))}"><h2>{html.escape(name)}</h2>\n{content}</section>'
        for name, content in sections
    )
    nav = " | ".join(f'<a href="#{_anchor(n)}">{html.escape(n)}</a>' for n, _ in sections)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f'<h1>{html.escape(title)}</h1>\n{header}\n<p class="note">{nav}</p>\n{body}\n'
        "</body>\n</html>\n"
    )


def _anchor(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower())


def error_note(what: str, err: Exception) -> str:
    return f'<p class="note">{html.escape(what)} not available: {html.escape(str(err))}</p>'
