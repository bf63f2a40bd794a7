"""MkDocs hook: the maths that ``pymdownx.arithmatex`` marks, rendered as MathML at build time.

``arithmatex`` (``generic: true``) wraps ``$...$`` in ``<span class="arithmatex">\\(...\\)
</span>`` and ``$$...$$`` in ``<div class="arithmatex">\\[...\\]</div>`` for a script to
typeset in the browser. The site loads no script from anywhere, so this converts them to
MathML with ``latex2mathml`` (pure Python, in the ``docs`` extra); browsers render MathML
natively. Where a formula does not convert, the build fails and names it, as strict mode
should.
"""

from __future__ import annotations

import html
import re
from typing import Any

from latex2mathml.converter import convert

INLINE = re.compile(r'<span class="arithmatex">\\\((?P<tex>.*?)\\\)</span>', re.DOTALL)
BLOCK = re.compile(r'<div class="arithmatex">\\\[(?P<tex>.*?)\\\]</div>', re.DOTALL)


# LaTeX that latex2mathml does not know, in terms it does
REWRITES = {r"\arg": r"\mathrm{arg}\,"}


def _mathml(tex: str, display: str, where: str) -> str:
    source = html.unescape(tex).strip()
    converted = source
    for old, new in REWRITES.items():
        converted = re.sub(re.escape(old) + r"(?![A-Za-z])", lambda _m, n=new: n, converted)
    try:
        out = convert(converted, display=display)
    except Exception as err:  # latex2mathml raises many types; name the formula
        raise ValueError(f"{where}: cannot convert the formula {source!r}: {err}") from err
    unknown = re.findall(r"<m[io][^>]*>(\\[A-Za-z]+)</m[io]>", out)
    if "<merror" in out or unknown:
        raise ValueError(
            f"{where}: the formula {source!r} does not convert to MathML "
            f"(unknown to latex2mathml: {', '.join(unknown) or 'see its output'}); rewrite "
            f"it, or add a rewrite to REWRITES in docs/_ext/mathml.py"
        )
    tag = "div" if display == "block" else "span"
    return f'<{tag} class="math" title="{html.escape(source)}">{out}</{tag}>'


def on_page_content(html_text: str, page: Any, **kwargs: Any) -> str:
    where = page.file.src_uri
    html_text = BLOCK.sub(lambda m: _mathml(m["tex"], "block", where), html_text)
    return INLINE.sub(lambda m: _mathml(m["tex"], "inline", where), html_text)
