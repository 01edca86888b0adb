"""One report document → Markdown and self-contained HTML, so both show the very same numbers.

A document is a list of sections; a section is a title and blocks: ("p", text), ("table", (header, rows))
where a header of None makes a key/value table, ("cards", (header, rows)) a table that a narrow screen shows
as one card per row (examples side by side), ("pre", text), ("fold", (summary, text)) for long text the
HTML shows folded, ("img", (alt, base64 PNG)), ("list", items) and ("links", [(text, html_href, md_href)])
for relative links to sibling reports (each format links to the same format). Plots are inlined as data
URIs (offline).
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
import unicodedata
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from tuneforge.evaluation.stats import sig

Block = tuple[str, Any]
Section = tuple[str, list[Block]]

# Tables sit in a scrolling box, so a phone-width window scrolls one wide table sideways instead of the whole
# page; only a cell holding a very long word (a hash, a path) may break inside it, since breaking every cell
# anywhere lets the browser squeeze columns to a letter wide. A key/value table's row labels wrap at spaces
# (a long one kept on one line ran past its cell into the value), never narrower than 8em.
CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;
line-height:1.4}
.table{overflow-x:auto;margin:.5em 0 1.2em}
table{border-collapse:collapse;font-size:14px}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top;max-width:420px}
td.long{overflow-wrap:anywhere;min-width:14em}
thead th{background:#f3f3f3} tbody th{font-weight:normal;background:#fafafa;min-width:8em}
@media (min-width:601px){td.num{white-space:nowrap}}
pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:13px}
h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em} img{max-width:100%;height:auto}
nav{font-size:14px;display:flex;flex-wrap:wrap;gap:.2em .8em} nav a{white-space:nowrap} li{margin:.2em 0}
details summary{cursor:pointer;color:#555}
@media (max-width:600px){body{margin:1em auto} th,td{padding:2px 4px;font-size:13px}
table.cards,.cards tbody,.cards tr,.cards td{display:block;max-width:none} .cards thead{display:none}
.cards tr{border:1px solid #ccc;margin-bottom:.6em} .cards td{border:0;border-top:1px solid #eee}
.cards td::before{content:attr(data-label) ": ";font-weight:600}}
"""


def num(x: Any) -> str:
    """A number as the report prints it: 3 significant digits, nan for a missing float, '' for None."""
    if isinstance(x, bool) or x is None:
        return "" if x is None else str(x)
    if isinstance(x, float):
        return "nan" if math.isnan(x) else sig(x)
    return str(x)


def with_ci(value: Any, ci: dict[str, Any] | None) -> str:
    """`value [lo, hi]` when the interval exists, else the value alone."""
    if ci is None or ci.get("lo") is None:
        return num(value)
    return f"{num(value)} [{num(ci['lo'])}, {num(ci['hi'])}]"


def visible(text: Any) -> str:
    """Text with control characters (a tiny or broken model emits them) shown as \\xNN instead of boxes."""
    s = str(text)
    if not any(unicodedata.category(c) == "Cc" for c in s):
        return s
    return "".join(
        f"\\x{ord(c):02x}" if unicodedata.category(c) == "Cc" and c not in "\n\t" else c for c in s
    )


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


def md_text(x: Any) -> str:
    """Text from data made inert in Markdown: HTML shown as text (as report.html shows it), no link or image.

    Markdown renderers pass raw HTML through (a label `<img src=x onerror=...>` would run in a viewer), and
    `![x](url)` would load a remote image, so `<`, `>`, `&` become entities and `](` loses its link meaning.
    """
    return html.escape(visible(x), quote=False).replace("](", "]\\(")


def _md_cell(x: Any) -> str:
    return " ".join(md_text(x).split()).replace("|", "\\|")


def _fence(text: str) -> str:
    """A code fence longer than any run of backticks in the text, so data cannot close it early."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def to_markdown(title: str, sections: list[Section]) -> str:
    out = [f"# {md_text(title)}", ""]
    for name, blocks in sections:
        out += [f"## {md_text(name)}", ""]
        for kind, value in blocks:
            if kind == "p":
                out += [" ".join(md_text(value).split("\n")), ""]
            elif kind == "list":
                out += [f"- {' '.join(md_text(item).split())}" for item in value] + [""]
            elif kind in ("pre", "fold"):
                text = str(value[1] if kind == "fold" else value).rstrip()
                out += [_fence(text), text, _fence(text), ""]
            elif kind == "img":
                out += [f"*({md_text(value[0])}: see report.html)*", ""]
            elif kind == "links":
                out += [f"- [{md_text(text)}](<{quote(md)}>)" for text, _, md in value] + [""]
            elif kind in ("table", "cards"):
                header, rows = value
                header = header or ["", ""]
                out.append("| " + " | ".join(_md_cell(h) for h in header) + " |")
                out.append("|" + "---|" * len(header))
                out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
                out.append("")
    return "\n".join(out).rstrip() + "\n"


_NUMERIC = re.compile(r"^[-+]?(\d[\d,.]*(e[-+]?\d+)?%?|nan|inf)( \[.*\])?$")


def _cell(c: Any, label: str = "") -> str:
    text = visible(c)
    # Numbers with their interval stay on one line; text wraps at spaces, a very long word anywhere.
    if _NUMERIC.match(text):
        cls = " class='num'"
    else:
        cls = " class='long'" if any(len(w) > 32 for w in text.split()) else ""
    data = f" data-label='{html.escape(label)}'" if label else ""
    return f"<td{cls}{data}>{html.escape(text)}</td>"


def _table(header: list[Any] | None, rows: list[list[Any]], cards: bool = False) -> str:
    e = html.escape
    if header is None:  # key/value: the key is the row's header cell, no empty header row above
        body = "".join(
            f"<tr><th scope='row'>{e(visible(row[0]))}</th>{''.join(_cell(c) for c in row[1:])}</tr>"
            for row in rows
        )
        return f"<div class='table'><table><tbody>{body}</tbody></table></div>"
    head = "".join(f"<th>{e(str(h))}</th>" for h in header)
    labels = [str(h) for h in header]
    body = "".join(
        "<tr>" + "".join(_cell(c, h) for c, h in zip(row, labels, strict=False)) + "</tr>" for row in rows
    )
    cls = " class='cards'" if cards else ""
    return f"<div class='table'><table{cls}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def _anchor(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def to_html(title: str, sections: list[Section]) -> str:
    e = html.escape
    nav = "".join(f"<a href='#{_anchor(name)}'>{e(name)}</a>" for name, _ in sections)
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{e(title)}</title><style>{CSS}</style></head><body><h1>{e(title)}</h1>",
        f"<nav>{nav}</nav>",
    ]
    for name, blocks in sections:
        parts.append(f"<h2 id='{_anchor(name)}'>{e(name)}</h2>")
        for kind, value in blocks:
            if kind == "p":
                parts.append(f"<p>{e(visible(value))}</p>")
            elif kind == "list":
                parts.append("<ul>" + "".join(f"<li>{e(visible(i))}</li>" for i in value) + "</ul>")
            elif kind == "pre":
                parts.append(f"<pre>{e(str(value))}</pre>")
            elif kind == "fold":
                parts.append(
                    f"<details><summary>{e(value[0])}</summary><pre>{e(str(value[1]))}</pre></details>"
                )
            elif kind == "img":
                parts.append(f"<img alt='{e(value[0])}' src='data:image/png;base64,{value[1]}'>")
            elif kind == "links":
                items = "".join(f"<li><a href='{e(quote(h))}'>{e(visible(t))}</a></li>" for t, h, _ in value)
                parts.append(f"<ul>{items}</ul>")
            elif kind in ("table", "cards"):
                parts.append(_table(value[0], value[1], cards=kind == "cards"))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
