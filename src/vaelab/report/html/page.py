"""The pieces of the HTML page: escaping and number cells, tables, figures with inline PNGs, notes, the CSS,
the Markdown of `vaelab evaluate` turned into HTML, and the page around the sections.

Nothing here knows about runs or models: the sections are made in `sections` and `pictures`.
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

GRID_WIDTH = 640  # CSS pixels an image grid is enlarged to, at most (by an integer factor: crisp pixels)


@dataclass(frozen=True)
class Picture:
    """One image of the page: PNG bytes, its caption, and whether it is a pixel grid (shown enlarged, crisp)."""

    png: bytes
    caption: str
    alt: str
    grid: bool = False


@dataclass(frozen=True)
class Section:
    """One section of the page; `missing` says why its content could not be made (shown instead of it)."""

    id: str
    title: str
    body: str = ""
    missing: str | None = None


def grid_png(array: np.ndarray) -> bytes:
    """PNG bytes of a uint8 image grid (`vaelab.report.images`), for inlining."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def plot_png(plot: Callable[..., Path], *args: Any, **kwargs: Any) -> bytes:
    """Run one of `vaelab.report.plots`' functions (which write a file) into a temporary file and return
    its PNG bytes, for inlining."""
    with tempfile.TemporaryDirectory(prefix="vaelab-report-") as tmp:
        path = plot(*args, Path(tmp) / "plot.png", **kwargs)
        return Path(path).read_bytes()


# --------------------------------------------------------------------------- HTML pieces


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any, digits: int = 2) -> str:
    """A number for a table cell (escaped text otherwise); an en dash for None."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else str(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return esc(value)


_NUMERIC = re.compile(r"[−+-]?[\d.,]+(e[+-]?\d+)?( ± [\d.,]+)?|–|-")


def table_html(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A table from cells that are HTML already; cells that read as numbers are right-aligned."""
    def cell(tag: str, text: str) -> str:
        attr = ' class="num"' if tag == "td" and _NUMERIC.fullmatch(text) is not None else ""
        return f"<{tag}{attr}>{text}</{tag}>"

    head = "".join(cell("th", h) for h in header)
    body = "".join("<tr>" + "".join(cell("td", c) for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], digits: Sequence[int] | None = None) -> str:
    """A table of values: numbers formatted (`digits` per column, default 2), text escaped."""
    digits = digits or [2] * len(header)
    return table_html([esc(h) for h in header], [[fmt(v, d) for v, d in zip(row, digits)] for row in rows])


def figure(picture: Picture) -> str:
    """A <figure> with the PNG inlined as a data URI; grids are enlarged by an integer factor (crisp pixels)."""
    with Image.open(io.BytesIO(picture.png)) as im:
        width, height = im.size
    scale = max(1, GRID_WIDTH // width) if picture.grid else 1
    data = base64.b64encode(picture.png).decode("ascii")
    return (f'<figure class="{"grid" if picture.grid else "plot"}"><img src="data:image/png;base64,{data}" '
            f'alt="{esc(picture.alt)}" width="{width * scale}" height="{height * scale}">'
            f"<figcaption>{esc(picture.caption)}</figcaption></figure>")


def note(text_html: str, kind: str = "info") -> str:
    """A boxed note: kind "info" (neutral) or "warn" (something is missing or unfinished)."""
    return f'<div class="note {kind}">{text_html}</div>'


def _inline(text: str) -> str:
    text = esc(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    text = re.sub(r"(?<![\w*])\*([^*\s][^*]*?)\*(?![\w*])", r"<em>\1</em>", text)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)


def markdown_to_html(text: str, image: Callable[[str, str], str], heading_offset: int = 2) -> str:
    """HTML of the Markdown that `vaelab.report.markdown` writes: headings (shifted down by `heading_offset`
    levels), paragraphs, '- ' lists, pipe tables, images alone on a line (`image(alt, target)` gives
    their HTML), **bold** and `code`. Anything else is kept as paragraph text."""
    out: list[str] = []
    para: list[str] = []
    items: list[str] = []
    rows: list[list[str]] = []

    def flush() -> None:
        if para:
            out.append("<p>" + " ".join(_inline(p) for p in para) + "</p>")
        if items:
            out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + "</ul>")
        if rows:
            body = [r for r in rows[1:] if not all(re.fullmatch(r":?-+:?", c) for c in r)]
            out.append(table_html([_inline(c) for c in rows[0]], [[_inline(c) for c in r] for r in body]))
        para.clear(), items.clear(), rows.clear()

    for line in text.splitlines():
        s = line.strip()
        heading = re.fullmatch(r"(#{1,6})\s+(.*)", s)
        picture = re.fullmatch(r"!\[([^\]]*)\]\(([^)]+)\)", s)
        block = (  # what kind of Markdown line this is
            "blank" if not s else "heading" if heading else "image" if picture else
            "row" if s.startswith("|") else "item" if s.startswith("- ") else "text")
        current = "row" if rows else "item" if items else "text" if para else None
        if current is not None and block != current:
            flush()
        if heading:
            level = min(6, len(heading.group(1)) + heading_offset)
            out.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
        elif picture:
            out.append(image(picture.group(1), picture.group(2)))
        elif block == "row":
            rows.append([c.strip() for c in s.strip("|").split("|")])
        elif block == "item":
            items.append(s[2:])
        elif block == "text":
            para.append(s)
    flush()
    return "\n".join(out)


# --------------------------------------------------------------------------- the page


CSS = """
:root { --ink: #1d2430; --muted: #5b6573; --line: #d9dee5; --soft: #f5f7fa; --accent: #1f5fa8; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--ink); background: #fff; line-height: 1.5;
       font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
header { background: var(--soft); border-bottom: 1px solid var(--line); padding: 1.4rem 0 1rem; }
header > div, main, footer { max-width: 1000px; margin: 0 auto; padding: 0 1.25rem; }
h1 { font-size: 1.6rem; margin: 0 0 .25rem; }
h2 { font-size: 1.3rem; margin: 2.2rem 0 .8rem; padding-bottom: .3rem; border-bottom: 2px solid var(--line); }
h3 { font-size: 1.1rem; margin: 1.5rem 0 .5rem; }
h4, h5, h6 { font-size: 1rem; margin: 1.2rem 0 .4rem; }
a { color: var(--accent); text-decoration: none; } a:hover { text-decoration: underline; }
.subtitle, .small, figcaption { color: var(--muted); }
.small { font-size: .85rem; }
nav { margin: 1.2rem 0; padding: .8rem 1.2rem; background: var(--soft); border: 1px solid var(--line);
      border-radius: 6px; }
nav h2 { font-size: 1rem; margin: 0 0 .3rem; border: 0; padding: 0; }
nav ol { margin: 0; padding-left: 1.4rem; columns: 2; }
nav .missing { color: var(--muted); }
table { border-collapse: collapse; margin: .6rem 0 1rem; font-size: .9rem; }
th, td { padding: .3rem .7rem; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
thead th { background: var(--soft); border-bottom: 2px solid var(--line); }
table.kv th { font-weight: 600; padding-right: 2rem; }
tbody tr:nth-child(even) { background: #fafbfc; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: var(--soft); border: 1px solid var(--line); border-radius: 6px; padding: .8rem 1rem;
      overflow: auto; max-height: 36rem; font-size: .82rem; line-height: 1.4; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .9em; }
figure { margin: .8rem 0 1.4rem; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid var(--line); }
figure.grid img { image-rendering: pixelated; image-rendering: crisp-edges; }
figcaption { font-size: .85rem; margin-top: .35rem; max-width: 640px; }
.row { display: flex; flex-wrap: wrap; gap: 1.5rem; }
.row figure { flex: 0 1 auto; max-width: 100%; }
.note { border-left: 4px solid var(--accent); background: #eef4fb; padding: .6rem .9rem; margin: .8rem 0;
        border-radius: 0 6px 6px 0; }
.note.warn { border-color: #c77700; background: #fff5e5; }
footer { margin-top: 3rem; padding-top: 1rem; padding-bottom: 2rem; border-top: 1px solid var(--line);
         color: var(--muted); font-size: .85rem; }
"""


def missing_by_reason(sections: Sequence[Section]) -> dict[str, list[str]]:
    reasons: dict[str, list[str]] = {}
    for s in sections:
        if s.missing is not None:
            reasons.setdefault(s.missing, []).append(s.title)
    return reasons


def missing_note(sections: Sequence[Section]) -> str:
    """One warning listing the sections that could not be made, grouped by reason."""
    reasons = missing_by_reason(sections)
    if not reasons:
        return ""
    items = "".join(f"<li><strong>{esc(', '.join(titles))}</strong>: {esc(why)}</li>"
                    for why, titles in reasons.items())
    return note(f"Some sections are missing:<ul>{items}</ul>", "warn")


def render_page(title: str, subtitle: str, sections: Sequence[Section], top: str, footer: str) -> str:
    """The whole page: header, warnings, contents, sections, footer. No scripts, no external resources."""
    contents = "".join(
        f'<li><a href="#{s.id}">{esc(s.title)}</a>{" <span class=missing>(missing)</span>" if s.missing else ""}</li>'
        for s in sections)
    body = "\n".join(
        f'<section id="{s.id}"><h2>{esc(s.title)}</h2>\n'
        + (note(f"Missing: {esc(s.missing)}", "warn") if s.missing is not None else s.body) + "\n</section>"
        for s in sections)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            f'<header><div><h1>{esc(title)}</h1><div class="subtitle">{esc(subtitle)}</div></div></header>\n'
            f"<main>\n{top}\n<nav><h2>Contents</h2><ol>{contents}</ol></nav>\n{body}\n</main>\n"
            f"<footer>{footer}</footer>\n</body>\n</html>\n")

