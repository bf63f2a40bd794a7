"""The documentation site builds with warnings as errors, documents every public name, and is
offline: no page loads a script, style, font or image from another host. README.md's links
to the site's sources resolve.

Builds the site once per run (``mkdocs build --strict``, about 15 s on two cores) into a
temporary folder. Skips, saying why, where the ``docs`` extra is not installed
(``pip install -e '.[docs]'``, which ``make docs`` does; CI runs ``make docs`` before
``make test``). That every code example on the pages runs is ``test_readme_examples.py``;
the site in a browser is ``test_docs_browser.py`` (slow).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

import deqkit

ROOT = Path(__file__).resolve().parents[1]
DOCS_EXTRA = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python", "latex2mathml")


def docs_extra_missing() -> str | None:
    """Why the site cannot be built here, or ``None``."""
    for module in DOCS_EXTRA:
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            return (
                f"the docs extra is not installed ({module} missing): "
                "pip install -e '.[docs]' (make docs installs it)"
            )
    return None


def build_site(out: Path) -> subprocess.CompletedProcess:
    """``mkdocs build --strict`` of the repository's site into ``out``."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    reason = docs_extra_missing()
    if reason:
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("site")
    done = build_site(out)
    log = done.stdout + done.stderr
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{log[-6000:]}"
    warnings = [ln for ln in log.splitlines() if "WARNING" in ln or "ERROR" in ln]
    assert not warnings, "the build warned:\n" + "\n".join(warnings)
    return out


class _Resources(HTMLParser):
    """Every URL a page would load by itself (scripts, styles, fonts, images, frames)."""

    LOADS = {"script": "src", "img": "src", "iframe": "src", "source": "src", "embed": "src"}

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.styles: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in self.LOADS and attrs.get(self.LOADS[tag]):
            self.urls.append(attrs[self.LOADS[tag]])
        if tag == "link" and attrs.get("href"):
            rel = (attrs.get("rel") or "").lower()
            if rel not in ("canonical", "alternate", "next", "prev"):
                self.urls.append(attrs["href"])  # stylesheet, icon, preconnect, preload
        if tag == "object" and attrs.get("data"):
            self.urls.append(attrs["data"])
        if attrs.get("style"):
            self.styles.append(attrs["style"])
        self._in_style = tag == "style"

    def handle_endtag(self, tag):
        self._in_style = False

    def handle_data(self, data):
        if self._in_style:
            self.styles.append(data)


EXTERNAL = re.compile(r"^\s*(?:https?:)?//", re.IGNORECASE)
CSS_URL = re.compile(r"""(?:url\(\s*['"]?|@import\s+['"])([^'")\s]+)""", re.IGNORECASE)


def external_loads(site: Path) -> list[str]:
    """``file: url`` for every resource of the built site that would come from another host."""
    bad = []
    for page in sorted(site.rglob("*.html")):
        parser = _Resources()
        parser.feed(page.read_text(encoding="utf-8"))
        urls = parser.urls + [u for css in parser.styles for u in CSS_URL.findall(css)]
        bad += [f"{page.relative_to(site)}: {u}" for u in urls if EXTERNAL.match(u)]
    for sheet in sorted(site.rglob("*.css")):
        for url in CSS_URL.findall(sheet.read_text(encoding="utf-8", errors="replace")):
            if EXTERNAL.match(url):
                bad.append(f"{sheet.relative_to(site)}: {url}")
    return bad


def test_the_check_for_external_resources_finds_them(tmp_path):
    (tmp_path / "a.html").write_text(
        '<html><head><script src="https://cdn.example/x.js"></script>'
        '<link rel="stylesheet" href="//fonts.example/css"><link rel="canonical" '
        'href="https://example.org/a/"><style>@import "https://x.example/y.css";</style>'
        '</head><body><a href="https://example.org">a link is fine</a>'
        '<img src="assets/local.png"><div style="background: url(https://x.example/i.png)">'
        "</div></body></html>"
    )
    (tmp_path / "b.css").write_text("@font-face { src: url('https://fonts.example/f.woff2') }")
    found = external_loads(tmp_path)
    assert found == [
        "a.html: https://cdn.example/x.js",
        "a.html: //fonts.example/css",
        "a.html: https://x.example/y.css",
        "a.html: https://x.example/i.png",
        "b.css: https://fonts.example/f.woff2",
    ]


def test_the_site_loads_nothing_from_another_host(site):
    assert external_loads(site) == []
    for page in site.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        assert "fonts.googleapis" not in text and "fonts.gstatic" not in text, page


def test_search_works_from_the_built_files(site):
    index = (site / "search" / "search_index.json").read_text(encoding="utf-8")
    assert "Anderson" in index and "getting-started.html" in index


def public_modules() -> list[str]:
    """``deqkit`` and every module under it whose dotted name has no private part."""
    names = ["deqkit"]
    for info in pkgutil.walk_packages(deqkit.__path__, prefix="deqkit."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return names


def api_anchors(site: Path) -> set[str]:
    ids = set()
    for page in (site / "api").glob("*.html"):
        ids |= set(re.findall(r'id="(deqkit[\w.]*)"', page.read_text(encoding="utf-8")))
    return ids


def test_every_public_name_has_an_api_entry(site):
    """Every name in a public module's ``__all__`` has an entry under one of the public
    paths of its object: its own module's, or that of a module that re-exports it
    (``deqkit.solvers.solve`` is documented as ``deqkit.solve``, ``deqkit.bench.Row`` as
    ``deqkit.bench.solvers.Row``)."""
    anchors = api_anchors(site)
    modules = public_modules()
    assert {"deqkit.solvers", "deqkit.nn", "deqkit.train", "deqkit.bench"} <= set(modules)
    exported = [
        (name, public, getattr(module, public))
        for name in modules
        for module in [importlib.import_module(name)]
        for public in getattr(module, "__all__", ())
    ]
    documented = {
        (public, id(obj)) for name, public, obj in exported if f"{name}.{public}" in anchors
    }
    missing = [f"{n}.{p}" for n, p, obj in exported if (p, id(obj)) not in documented]
    assert not missing, f"public names without an API entry (add them to docs/api/): {missing}"


def test_docstrings_render_as_markdown(site):
    """The reST parts of the docstrings (docs/_ext/rst_docstrings.py) are converted:
    maths is MathML, cross-references are links, no directive or role is left as text."""
    solvers = (site / "api" / "solvers.html").read_text(encoding="utf-8")
    assert solvers.count("<math") >= 3  # Picard, Anderson, Broyden update rules
    assert 'href="#deqkit.solvers.Solver"' in solvers  # :class:`Solver`
    for page in (site / "api").glob("*.html"):
        text = page.read_text(encoding="utf-8")
        for leftover in (".. math::", ":class:`", ":func:`", ":meth:`", ":math:`", "arithmatex"):
            assert leftover not in text, f"{page.name}: {leftover!r} left unconverted"
        assert not re.search(r"<p>=+\s+=+", text), f"{page.name}: a reST table left as text"
    models = (site / "api" / "models.html").read_text(encoding="utf-8")
    assert '<td><code>"recall1d"</code></td>' in models  # build_model's table


def test_readme_links_resolve_in_a_clone():
    """README.md's relative links (the site's sources, docs/index.md) point at files."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    local = [link for link in links if not EXTERNAL.match(link) and ":" not in link]
    assert "docs/index.md" in local
    assert [link for link in local if not (ROOT / link).exists()] == []
