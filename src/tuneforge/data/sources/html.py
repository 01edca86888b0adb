"""HTML pages: a local .html file, or a text file listing one URL per line (# comments allowed).

Each page becomes one example {"text", "title", "url"}: the main text (the <main> or <article> element when
the page has one, else <body>) without navigation, headers, footers, scripts, styles and forms.
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tuneforge import __version__
from tuneforge.config import DataConfig
from tuneforge.data.sources.base import RawRow, read_lines, resolve_encoding
from tuneforge.errors import TuneforgeError

HTML_SUFFIXES = (".html", ".htm", ".xhtml")
URL_LIST_SUFFIXES = (".urls",)
TIMEOUT_S = 30
_URL = re.compile(r"^https?://\S+$", re.IGNORECASE)
_DROP = (
    "script",
    "style",
    "noscript",
    "template",
    "nav",
    "header",
    "footer",
    "aside",
    "form",
    "iframe",
    "svg",
)
_BLOCKS = (
    "p", "div", "section", "article", "main", "li", "ul", "ol", "dl", "dt", "dd", "table", "tr", "blockquote",
    "pre", "h1", "h2", "h3", "h4", "h5", "h6", "figure", "figcaption", "hr",
)  # fmt: skip


def is_url_list(path: Path) -> bool:
    """A text file whose first few non-comment lines are all http(s) URLs."""
    if path.suffix.lower() in URL_LIST_SUFFIXES:
        return True
    lines: list[str] = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#"):
                lines.append(line)
                if len(lines) == 5:
                    break
    return bool(lines) and all(_URL.match(line) for line in lines)


def read(location: str, cfg: DataConfig) -> Iterator[RawRow]:
    path = Path(location)
    if path.suffix.lower() in HTML_SUFFIXES:
        size = path.stat().st_size
        if size > cfg.max_row_bytes:
            yield RawRow({}, str(path), ("row_too_large", f"the page has {size} bytes"))
            return
        yield RawRow(page_fields(path.read_bytes(), None, str(path)), str(path))
        return
    for line in read_lines(path, resolve_encoding(path, cfg, sniff=False), cfg.max_row_bytes):
        where = f"{path}:{line.number}"
        url = (line.text or "").strip()
        if line.problem:
            yield RawRow({}, where, line.problem)
        elif url and not url.startswith("#"):
            yield _fetch(url, where, cfg)


def _fetch(url: str, where: str, cfg: DataConfig) -> RawRow:
    if not _URL.match(url):
        return RawRow({}, where, ("invalid_url", f"{url!r} is not an http(s) URL"))
    request = urllib.request.Request(url, headers={"User-Agent": f"tuneforge/{__version__}"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            data = response.read(cfg.max_row_bytes + 1)
            content_type = response.headers.get_content_type()
            charset = response.headers.get_content_charset()
    except (urllib.error.URLError, TimeoutError, OSError) as err:
        reason = getattr(err, "reason", err)
        return RawRow({"url": url}, where, ("fetch_failed", f"could not fetch {url}: {reason}"))
    if len(data) > cfg.max_row_bytes:
        return RawRow(
            {"url": url}, where, ("row_too_large", f"{url} is larger than {cfg.max_row_bytes} bytes")
        )
    if content_type == "text/plain":
        text = data.decode(charset or "utf-8", errors="replace")
        return RawRow({"text": text, "title": "", "url": url}, where)
    if content_type not in ("text/html", "application/xhtml+xml"):
        return RawRow(
            {"url": url}, where, ("unsupported_content", f"{url} is {content_type}, not an HTML page")
        )
    return RawRow(page_fields(data, charset, url), where)


def page_fields(data: bytes, charset: str | None, url: str) -> dict[str, Any]:
    """The main text and title of a page.

    Written on BeautifulSoup (already a dependency, pure Python) instead of a boilerplate-removal package such
    as trafilatura, which would pull in lxml and a dozen more packages for the same structural rules.
    """
    from bs4 import BeautifulSoup

    try:
        soup = BeautifulSoup(data, "html.parser", from_encoding=charset)
    except Exception as err:  # bs4 raises assorted parser errors on broken markup
        raise TuneforgeError(f"cannot parse the page: {err}", where=url) from None
    title = soup.title.get_text(" ", strip=True) if soup.title else ""
    for tag in soup(_DROP):
        tag.decompose()
    for tag in soup.find_all(role=["navigation", "banner", "contentinfo"]):
        tag.decompose()
    for tag in soup.find_all("br"):
        tag.replace_with("\n")
    root = soup.find("main") or soup.find("article") or soup.body or soup
    for tag in root.find_all(_BLOCKS):
        tag.insert_before("\n\n")
        tag.insert_after("\n\n")
    paragraphs = (" ".join(p.split()) for p in re.split(r"\n\s*\n", root.get_text()))
    return {"text": "\n\n".join(p for p in paragraphs if p), "title": title, "url": url}
