"""MkDocs hook: a list may start right after a paragraph line, as on GitHub.

CommonMark (GitHub) lets a bullet list, or an ordered list starting at 1, interrupt a
paragraph; Python-Markdown needs a blank line first and otherwise runs the items into the
paragraph. ``README.md`` (included by ``docs/index.md``) and ``docs/results.md`` are written
for GitHub, so this adds that blank line before such an item. It runs as a Markdown
preprocessor after the snippet includes and after fenced code is set aside, so code blocks
are never touched.
"""

from __future__ import annotations

import re
from typing import Any

from markdown import Extension
from markdown.preprocessors import Preprocessor

ITEM = re.compile(r"^(?:[-*+]|1[.)])\s+\S")
NOT_PARAGRAPH = re.compile(r"^(?:\s|#|\||>|<|!!!|\?\?\?|(?:[-*+]|\d+[.)])\s)")


class _ListsInterrupt(Preprocessor):
    def run(self, lines: list[str]) -> list[str]:
        out: list[str] = []
        for line in lines:
            previous = out[-1] if out else ""
            if ITEM.match(line) and previous.strip() and not NOT_PARAGRAPH.match(previous):
                out.append("")
            out.append(line)
        return out


class ListsInterruptParagraphs(Extension):
    def extendMarkdown(self, md):  # noqa: N802 (Python-Markdown's name)
        # after pymdownx.snippets (32) and superfences' code stash (25), before HTML blocks
        md.preprocessors.register(_ListsInterrupt(md), "lists_interrupt_paragraphs", 22)


def on_config(config: Any, **kwargs: Any) -> Any:
    config.markdown_extensions.append(ListsInterruptParagraphs())
    return config
