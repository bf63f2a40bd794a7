"""Griffe extension: the reST parts of deqkit's Google-style docstrings, as Markdown.

The docstrings are Google style (``Args:``, ``Returns:``, ...) with a few reST constructs
that the Markdown renderer would show verbatim. This rewrites them once the package is
loaded, before mkdocstrings renders anything:

* ``.. math:: ...`` (one line, or an indented block) becomes a ``$$ ... $$`` block, and
  ``:math:`...``` becomes ``$...$``; ``pymdownx.arithmatex`` marks them and
  ``docs/_ext/mathml.py`` turns them into MathML at build time (no script, no network).
  A block with ``&`` becomes an ``align*`` environment, one with only ``\\\\`` line breaks
  a one-column ``array`` (the environments that latex2mathml lays out as rows).
* ``:class:`~a.b.C```, ``:func:``, ``:meth:``, ``:attr:``, ``:mod:``, ``:data:``,
  ``:exc:``, ``:obj:`` become cross-references where the name resolves (from the
  docstring's own scope outwards, as Sphinx does), plain code otherwise. They are
  *optional* references, so a name that the site does not document stays code and never
  fails the strict build.
* A reST simple table (rows between ``=====  =====`` borders) becomes a pipe table.
* A field list outside the Google sections (``TrainConfig`` groups its fields under
  ``Task:``, ``Model:``, ...: lines ``name: description`` indented under a heading line)
  becomes a bullet list, one field per item, instead of one run-on paragraph.
* A paragraph ending in ``::`` (a reST literal block follows) ends in ``:``.

Loaded by ``mkdocs.yml`` (``handlers.python.options.extensions``); nothing in ``src/``
depends on it.
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

ROLE = re.compile(r":(class|func|meth|attr|mod|data|exc|obj):`([^`]+)`")
INLINE_MATH = re.compile(r":math:`([^`]+)`")
MATH_DIRECTIVE = re.compile(r"^(?P<indent>\s*)\.\. math::\s*(?P<rest>.*)$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _environment(tex: str) -> str:
    if "&" in tex:
        return rf"\begin{{align*}}{tex}\end{{align*}}"
    if r"\\" in tex:
        return rf"\begin{{array}}{{c}}{tex}\end{{array}}"
    return tex


def math_blocks(text: str) -> str:
    """``.. math::`` directives (one line or an indented block) as ``$$`` blocks."""
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        m = MATH_DIRECTIVE.match(lines[i])
        if m is None:
            out.append(lines[i])
            i += 1
            continue
        indent, body = len(m["indent"]), [m["rest"]] if m["rest"].strip() else []
        i += 1
        while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > indent):
            body.append(lines[i].strip())
            i += 1
        tex = " ".join(part for part in body if part)
        pad = " " * indent
        if out and out[-1].strip():
            out.append("")
        out += [f"{pad}$$", f"{pad}{_environment(tex)}", f"{pad}$$", ""]
    return "\n".join(out)


BORDER = re.compile(r"^\s*=+(?:\s+=+)+\s*$")


def simple_tables(text: str) -> str:
    """reST simple tables (border, header, border, rows, border) as Markdown pipe tables."""
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        if not BORDER.match(lines[i]) or i + 2 >= len(lines) or lines[i + 2] != lines[i]:
            out.append(lines[i])
            i += 1
            continue
        border = lines[i]
        spans = [m.span() for m in re.finditer(r"=+", border)]
        end = next((j for j in range(i + 3, len(lines)) if lines[j] == border), None)
        if end is None:
            out.append(lines[i])
            i += 1
            continue
        pad = border[: len(border) - len(border.lstrip())]

        def cells(line: str, spans=spans) -> list[str]:
            starts = [a for a, _ in spans] + [None]
            return [line[starts[k] : starts[k + 1]].strip() for k in range(len(spans))]

        rows = [cells(lines[i + 1])] + [cells(ln) for ln in lines[i + 3 : end] if ln.strip()]
        table = ["| " + " | ".join(row) + " |" for row in rows]
        table.insert(1, "|" + "---|" * len(spans))
        out += [pad + row for row in table]
        i = end + 1
    return "\n".join(out)


GOOGLE_SECTIONS = {
    *("args", "arguments", "params", "parameters", "keyword args", "keyword arguments"),
    *("other args", "other arguments", "other params", "other parameters"),
    *("type args", "type arguments", "type params", "type parameters", "raises"),
    *("exceptions", "returns", "yields", "receives", "examples", "attributes", "functions"),
    *("methods", "classes", "type aliases", "modules", "warns", "warnings"),
}  # the section titles griffe's Google parser reads itself
SECTION = re.compile(r"^(?P<type>\w[\s\w-]*):(\s+\S.*)?\s*$")  # griffe's admonition / section line
FIELD = re.compile(r"^(?P<pad>\s*)(?P<names>[a-z_]\w*(?:, [a-z_]\w*)*): (?P<rest>\S.*)$")


def field_lists(text: str) -> str:
    """``name: description`` lines indented under a heading that is not a Google section.

    Inside a Google section (``Args:``...) griffe reads such lines itself; under a heading
    line ``Title:`` that griffe turns into an admonition, the items keep their indent (the
    admonition's body); under a paragraph they start at its indent, after a blank line (a
    Markdown list must not start inside a paragraph, and a deeper one is code).
    """
    lines, out = text.splitlines(), []
    section = None  # indent of the Google section whose body we are in
    items = None  # (indent of the items, indent they are written at)
    for line in lines:
        indent, blank = _indent(line), not line.strip()
        if not blank and section is not None and indent <= section:
            section = None
        if not blank and items is not None and indent < items[0]:
            items = None
        field = FIELD.match(line)
        if items is not None and field and indent == items[0]:
            out.append(_item(field, items[1]))
            continue
        heading = next((ln for ln in reversed(out) if ln.strip()), None)
        if items is None and section is None and field and heading is not None:
            if indent > _indent(heading):
                title = SECTION.match(heading.strip())
                if title and title["type"].strip().lower() in GOOGLE_SECTIONS:
                    section = _indent(heading)
                    out.append(line)
                    continue
                at = indent if title else _indent(heading)
                if not title and out[-1].strip():
                    out.append("")
                items = (indent, at)
                out.append(_item(field, at))
                continue
        if not blank and SECTION.match(line.strip()) and line.strip().endswith(":"):
            if line.strip()[:-1].strip().lower() in GOOGLE_SECTIONS:
                section = indent
        out.append(line)
    return "\n".join(out)


def _item(field: re.Match, indent: int) -> str:
    names = ", ".join(f"``{n}``" for n in field["names"].split(", "))
    return f"{' ' * indent}- {names}: {field['rest']}"


def literal_markers(text: str) -> str:
    """A reST ``::`` at the end of a paragraph line becomes ``:`` (``Examples::``)."""
    return re.sub(r"(?<=\S)::[ \t]*$", ":", text, flags=re.MULTILINE)


class RstToMarkdown(griffe.Extension):
    """Rewrite every docstring of a loaded package (see the module docstring)."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        self.pkg = pkg
        self._walk(pkg, set())

    def _walk(self, obj: griffe.Object, seen: set[str]) -> None:
        if obj.path in seen:
            return
        seen.add(obj.path)
        if obj.docstring is not None:
            obj.docstring.value = self.convert(obj.docstring.value, obj)
            obj.docstring.__dict__.pop("parsed", None)  # parsed lazily, after this
        for member in obj.members.values():
            if not member.is_alias:
                self._walk(member, seen)

    def convert(self, text: str, obj: griffe.Object) -> str:
        text = math_blocks(text)
        text = simple_tables(text)
        text = field_lists(text)
        text = INLINE_MATH.sub(lambda m: f"${' '.join(m[1].split())}$", text)
        text = ROLE.sub(lambda m: self._reference(m[1], m[2], obj), text)
        return literal_markers(text)

    def _reference(self, role: str, target: str, obj: griffe.Object) -> str:
        target = " ".join(target.split())
        explicit = re.fullmatch(r"(?P<title>.+?)\s*<(?P<target>[^>]+)>", target)
        if explicit:
            title, target = explicit["title"], explicit["target"]
        else:
            title = None
        shown_short = target.startswith("~")
        target = target.lstrip("~.")
        if title is None:
            title = target.rsplit(".", 1)[-1] if shown_short else target
        code = f"<code>{html.escape(title)}</code>"
        found = self._resolve(target, obj)
        if found is None:
            return code
        return f'<autoref identifier="{found}" optional>{code}</autoref>'

    def _resolve(self, target: str, obj: griffe.Object) -> str | None:
        scopes, scope = [], obj
        while scope is not None:
            scopes.append(scope.path)
            scope = scope.parent
        candidates = [target] + [f"{path}.{target}" for path in scopes]
        root = self.pkg.path
        for candidate in candidates:
            if candidate == root:
                return candidate
            if not candidate.startswith(root + "."):
                continue
            try:
                self.pkg[candidate[len(root) + 1 :]]
            except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
                continue
            return candidate
        return None
