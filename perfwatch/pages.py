"""A report as data, rendered twice: Markdown, and self-contained HTML.

A report is built once as a list of blocks (headings, text, tables, lists, figures), so
both files always say the same thing:

* ``report.md``, with the figures as PNG/SVG files next to it;
* ``report.html``, self-contained: CSS inline, figures embedded as ``data:`` URIs and SVG
  inline, a Content-Security-Policy that allows no URL at all, so it opens from disk
  anywhere. An image that fails to decode is marked on the page.

Every string from outside (command lines, function names, file paths, evidence, benchmark
names) is escaped here, by the renderers, never by the code that builds the blocks.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from perfwatch.errors import UserError
from perfwatch.store import write_atomic


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Text:
    """A paragraph: ``lead`` in bold, then ``text``; ``highlight`` sets it apart (the verdict of the report)."""

    text: str
    lead: str = ""
    highlight: bool = False


@dataclass(frozen=True)
class Table:
    """Cells are plain strings; ``numeric`` columns align right, ``code`` columns are code;
    ``row_classes`` (HTML only) colours rows such as failures and regressions."""

    columns: tuple[str, ...]
    rows: list[tuple[str, ...]]
    numeric: frozenset[int] = frozenset()
    code: frozenset[int] = frozenset()
    row_classes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Item:
    title: str
    tag: str = ""  # an identifier shown as code (a recommendation's id)
    note: str = ""
    details: tuple[tuple[str, str], ...] = ()  # (label, text)


@dataclass(frozen=True)
class Items:
    items: list[Item]
    ordered: bool = False


@dataclass(frozen=True)
class Figure:
    """A figure file next to the report: ``data`` is its content, PNG or SVG (by ``name``)."""

    name: str
    caption: str
    data: bytes

    @property
    def svg(self) -> bool:
        return self.name.endswith(".svg")


Block = Heading | Text | Table | Items | Figure


@dataclass(frozen=True)
class Document:
    title: str
    blocks: list[Block] = field(default_factory=list)


# ---------------------------------------------------------------- Markdown

# CommonMark lets any ASCII punctuation be backslash-escaped; these change meaning inline or in a
# table cell (emphasis, links, code, HTML, GitHub math, the cell separator).
_MD_SPECIAL = re.compile(r"[\\`*\[\]<>|&~$]|(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])")
_CONTROL = re.compile("[\x00-\x1f\x7f]")  # invisible in a report; terminal colour codes, for one


def md_escape(text: str) -> str:
    """Plain text as Markdown inline content on one line, safe in a table cell: punctuation that
    would start markup or raw HTML is backslash-escaped (an underscore inside a word is left
    alone: it never starts emphasis), control characters are dropped."""
    one_line = _CONTROL.sub("", " ".join(str(text).split()))
    return _MD_SPECIAL.sub(lambda m: "\\" + m[0], one_line)


def md_code(text: str) -> str:
    """A code span that holds any text, backticks included."""
    text = " ".join(str(text).split())
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _md_cell(text: str, code: bool) -> str:
    return md_code(text).replace("|", "\\|") if code else md_escape(text)


def to_markdown(doc: Document) -> str:
    lines = [f"# {md_escape(doc.title)}", ""]
    for block in doc.blocks:
        if isinstance(block, Heading):
            lines += ["#" * block.level + " " + md_escape(block.text), ""]
        elif isinstance(block, Text):
            lead = f"**{md_escape(block.lead)}**" if block.lead else ""
            lines += [(lead + (" " if lead and block.text else "") + md_escape(block.text)), ""]
        elif isinstance(block, Table):
            lines.append("| " + " | ".join(md_escape(c) for c in block.columns) + " |")
            rule = ("---:" if i in block.numeric else "---" for i in range(len(block.columns)))
            lines.append("|" + "|".join(rule) + "|")
            lines += ["| " + " | ".join(_md_cell(cell, i in block.code) for i, cell in enumerate(row)) + " |"
                      for row in block.rows]
            lines.append("")
        elif isinstance(block, Items):
            for n, item in enumerate(block.items, 1):
                head = f"{n}." if block.ordered else "-"
                tag = f" ({md_code(item.tag)})" if item.tag else ""
                note = f" — {md_escape(item.note)}" if item.note else ""
                lines.append(f"{head} **{md_escape(item.title)}**{tag}{note}")
                lines += [f"   - {md_escape(label)}: {md_escape(text)}" for label, text in item.details]
            lines.append("")
        else:
            lines += [f"![{md_escape(block.caption)}]({block.name})", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- HTML

# Marks a figure whose image did not decode: visible to the reader (CSS below) and to tests.
_ON_IMAGE_ERROR = "this.parentNode.dataset.failed='1'"
_CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-hashes' 'sha256-"
        + base64.b64encode(hashlib.sha256(_ON_IMAGE_ERROR.encode()).digest()).decode() + "'")
_CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1d1d1f;margin:0;background:#fafafa}
main{max-width:1240px;margin:0 auto;padding:24px 32px 48px;background:#fff}
h1{font-size:1.5em;overflow-wrap:anywhere}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}
.summary{font-size:1.15em;background:#fff4e5;border-left:5px solid #ff7f0e;padding:10px 14px}
table{border-collapse:collapse;margin:8px 0 16px;font-size:.9em}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}th{background:#f2f2f2}
td.num{text-align:right;white-space:nowrap}tr.bad td{background:#fde8e8}tr.good td{background:#e8f6e8}
tr.warn td{background:#fff6e0}code{font:.92em ui-monospace,Menlo,Consolas,monospace;overflow-wrap:anywhere}
li{margin:6px 0}li ul{margin:2px 0}.label{color:#555}.tag{color:#555}
figure{margin:12px 0 20px}figure img{max-width:100%;height:auto;border:1px solid #eee}
figure .flame svg{width:100%;height:auto;border:1px solid #eee}figcaption{color:#555;font-size:.9em}
figure[data-failed]::after{content:"image failed to load";display:block;color:#b00;font-weight:bold}
"""


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _class(css: str) -> str:
    return f' class="{css}"' if css else ""


def _html_block(block: Block) -> str:
    if isinstance(block, Heading):
        return f"<h{block.level}>{_esc(block.text)}</h{block.level}>"
    if isinstance(block, Text):
        lead = f"<strong>{_esc(block.lead)}</strong> " if block.lead else ""
        return f"<p{_class('summary' if block.highlight else '')}>{lead}{_esc(block.text)}</p>"
    if isinstance(block, Table):
        head = "".join(f"<th>{_esc(c)}</th>" for c in block.columns)
        body = []
        for r, row in enumerate(block.rows):
            css = block.row_classes[r] if r < len(block.row_classes) else ""
            cells = "".join(
                f"<td{_class('num' if i in block.numeric else '')}>"
                + (f"<code>{_esc(cell)}</code>" if i in block.code and cell else _esc(cell)) + "</td>"
                for i, cell in enumerate(row))
            body.append(f"<tr{_class(css)}>{cells}</tr>")
        return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    if isinstance(block, Items):
        tag = "ol" if block.ordered else "ul"
        items = []
        for item in block.items:
            details = "".join(f"<li><span class=\"label\">{_esc(label)}:</span> {_esc(text)}</li>"
                              for label, text in item.details)
            items.append(f"<li><strong>{_esc(item.title)}</strong>"
                         + (f" <code class=\"tag\">{_esc(item.tag)}</code>" if item.tag else "")
                         + (f" — {_esc(item.note)}" if item.note else "")
                         + (f"<ul>{details}</ul>" if details else "") + "</li>")
        return f"<{tag}>{''.join(items)}</{tag}>"
    caption = f"<figcaption>{_esc(block.caption)}</figcaption>"
    if block.svg:  # inline, so that its tooltips work; our own SVG, its strings escaped when drawn
        return f"<figure><div class=\"flame\">{block.data.decode()}</div>{caption}</figure>"
    source = "data:image/png;base64," + base64.b64encode(block.data).decode()
    return (f"<figure><img src=\"{source}\" alt=\"{_esc(block.caption)}\" "
            f"onerror=\"{_ON_IMAGE_ERROR}\">{caption}</figure>")


def to_html(doc: Document) -> str:
    body = "\n".join(_html_block(block) for block in doc.blocks)
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"{_CSP}\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{_esc(doc.title)}</title><style>{_CSS}</style></head>\n"
            f"<body><main>\n<h1>{_esc(doc.title)}</h1>\n{body}\n</main></body></html>\n")


def encodable(text: str) -> str:
    """``text`` as UTF-8 can hold it: a lone surrogate (from a name read with surrogateescape, or a JSON
    ``\\udcff``) has no encoding, and is written out as its escape ``\\udcff`` instead."""
    return text.encode("utf-8", "backslashreplace").decode()


def write_pages(doc: Document, out: Path) -> None:
    """``report.md`` and ``report.html`` in ``out``, each written atomically."""
    write_atomic(out / "report.md", encodable(to_markdown(doc)))
    write_atomic(out / "report.html", encodable(to_html(doc)))


def prepare_out_dir(out: Path) -> Path:
    """Create ``out`` and prove it writable before anything is launched (UserError if not)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".perfwatch-write-test-"):
            pass
    except OSError as exc:
        raise UserError(f"output directory {out} is not writable: {exc.strerror or exc}; "
                        "choose another output directory", setting="out") from None
    return out
