"""Reports a person can open: Markdown and a self-contained HTML page with embedded plots."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ._io import write_text_atomic

__all__ = ["Report", "markdown_table"]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table from a header and rows (cells formatted with ``str``)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


@dataclass
class Report:
    """A report built section by section, written as ``report.md`` and ``report.html``.

    Sections hold Markdown text (paragraphs, bullet lists, pipe tables) and PNG figures; the
    HTML page embeds the figures as data URIs, so it is a single file.
    """

    title: str
    parts: list[tuple[str, str | Path]] = field(default_factory=list)

    def heading(self, text: str) -> None:
        self.parts.append(("h2", text))

    def text(self, markdown: str) -> None:
        self.parts.append(("md", markdown.strip()))

    def figure(self, path: str | Path, caption: str = "") -> None:
        self.parts.append(("img", Path(path)))
        if caption:
            self.parts.append(("caption", caption))

    def to_markdown(self, folder: Path) -> str:
        out = [f"# {self.title}", ""]
        for kind, value in self.parts:
            if kind == "h2":
                out += [f"## {value}", ""]
            elif kind == "md":
                out += [str(value), ""]
            elif kind == "img":
                rel = (
                    Path(value).relative_to(folder) if Path(value).is_relative_to(folder) else value
                )
                out += [f"![{Path(value).stem}]({rel})", ""]
            else:
                out += [f"*{value}*", ""]
        return "\n".join(out)

    def to_html(self) -> str:
        body = [f"<h1>{html.escape(self.title)}</h1>"]
        for kind, value in self.parts:
            if kind == "h2":
                body.append(f"<h2>{html.escape(str(value))}</h2>")
            elif kind == "md":
                body.append(_markdown_to_html(str(value)))
            elif kind == "img":
                data = base64.b64encode(Path(value).read_bytes()).decode("ascii")
                alt = html.escape(Path(value).stem)
                body.append(f'<img alt="{alt}" src="data:image/png;base64,{data}">')
            else:
                body.append(f'<p class="caption">{html.escape(str(value))}</p>')
        return _PAGE.format(title=html.escape(self.title), body="\n".join(body))

    def write(self, folder: str | Path) -> tuple[Path, Path]:
        """Write ``report.md`` and ``report.html`` into ``folder`` atomically."""
        folder = Path(folder)
        md = write_text_atomic(folder / "report.md", self.to_markdown(folder))
        page = write_text_atomic(folder / "report.html", self.to_html())
        return md, page


def _inline(text: str) -> str:
    text = html.escape(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)


def _markdown_to_html(block: str) -> str:
    """The small Markdown subset the reports use: paragraphs, bullets, pipe tables."""
    out, lines = [], block.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                cells = [c.strip() for c in lines[i].strip().strip("|").split("|")]
                if not all(set(c) <= set("-: ") for c in cells):
                    rows.append(cells)
                i += 1
            head = "".join(f"<th>{_inline(c)}</th>" for c in rows[0])
            rest = "".join(
                "<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in rows[1:]
            )
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rest}</tbody></table>")
        elif line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{_inline(lines[i][2:])}</li>")
                i += 1
            out.append("<ul>" + "".join(items) + "</ul>")
        elif line.strip():
            para = []
            while i < len(lines) and lines[i].strip() and not lines[i].startswith(("|", "- ")):
                para.append(lines[i])
                i += 1
            out.append(f"<p>{_inline(' '.join(para))}</p>")
        else:
            i += 1
    return "\n".join(out)


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 980px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.92em; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }}
th {{ background: #f2f2f2; }}
td:first-child, th:first-child {{ text-align: left; }}
img {{ max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }}
code {{ background: #f5f5f5; padding: 0 0.2em; }}
.caption {{ color: #555; font-size: 0.9em; margin-top: 0; }}
</style>
</head>
<body>
{body}
</body>
</html>
"""
