"""One report document → Markdown and self-contained HTML, so both show the very same numbers.

A document is a list of sections; a section is a title and blocks: ("p", text), ("table", (header, rows)),
("pre", text), ("img", (alt, base64 PNG)), ("list", items). Plots are inlined as data URIs (offline).
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable
from typing import Any

Block = tuple[str, Any]
Section = tuple[str, list[Block]]

CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.2em;font-size:14px}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top;max-width:420px}
th{background:#f3f3f3} pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:13px}
h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em} img{max-width:100%}
.verdict{font-weight:600} li{margin:.2em 0}
"""


def plot_png(draw: Callable[[Any], None], size: tuple[float, float] = (7, 3.5)) -> str:
    """A base64 PNG of what `draw(ax)` plots (no timestamp in the file, so reports are reproducible)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=100)
    draw(fig.add_subplot())
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _md_cell(x: Any) -> str:
    return " ".join(str(x).split()).replace("|", "\\|")


def to_markdown(title: str, sections: list[Section]) -> str:
    out = [f"# {title}", ""]
    for name, blocks in sections:
        out += [f"## {name}", ""]
        for kind, value in blocks:
            if kind == "p":
                out += [str(value), ""]
            elif kind == "list":
                out += [f"- {item}" for item in value] + [""]
            elif kind == "pre":
                out += ["```", str(value).rstrip(), "```", ""]
            elif kind == "img":
                out += [f"*({value[0]}: see report.html)*", ""]
            elif kind == "table":
                header, rows = value
                out.append("| " + " | ".join(_md_cell(h) for h in header) + " |")
                out.append("|" + "---|" * len(header))
                out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
                out.append("")
    return "\n".join(out).rstrip() + "\n"


def to_html(title: str, sections: list[Section]) -> str:
    e = html.escape
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>",
        f"<style>{CSS}</style></head><body><h1>{e(title)}</h1>",
    ]
    for name, blocks in sections:
        parts.append(f"<h2>{e(name)}</h2>")
        for kind, value in blocks:
            if kind == "p":
                parts.append(f"<p>{e(str(value))}</p>")
            elif kind == "list":
                parts.append("<ul>" + "".join(f"<li>{e(str(i))}</li>" for i in value) + "</ul>")
            elif kind == "pre":
                parts.append(f"<pre>{e(str(value))}</pre>")
            elif kind == "img":
                parts.append(f"<img alt='{e(value[0])}' src='data:image/png;base64,{value[1]}'>")
            elif kind == "table":
                header, rows = value
                head = "".join(f"<th>{e(str(h))}</th>" for h in header)
                body = "".join(
                    "<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in rows
                )
                parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
