"""The built site in a real browser: headless Chromium, served from localhost.

Builds the site (as ``make docs`` does, into a temporary folder), serves it with Python's
``http.server`` on 127.0.0.1, and opens the getting-started page and the ``deqkit`` API page:
a screenshot of each, and the DOM after the page's scripts ran, checked for the
navigation, a highlighted code block and a rendered docstring. Every host but 127.0.0.1 is
unresolvable for the browser, so a page that needed the network would show it. Slow
(``make test-slow``, which installs Chromium and the docs extra); skips, saying why,
without Chromium or the docs extra. Set ``DEQKIT_DOCS_SHOTS=folder`` to keep the
screenshots.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_docs import build_site, docs_extra_missing

pytestmark = pytest.mark.slow

PNG = b"\x89PNG\r\n\x1a\n"


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("chromium is not installed (make test-slow installs it)")
    return found


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """``(base URL, site folder)`` of the freshly built site, served on 127.0.0.1."""
    reason = docs_extra_missing()
    if reason:
        pytest.skip(reason)
    site = tmp_path_factory.mktemp("site")
    done = build_site(site)
    assert done.returncode == 0, done.stdout + done.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=site,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/index.html")
                assert conn.getresponse().status == 200
                conn.close()
                break
            except (ConnectionRefusedError, OSError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}", site
    finally:
        server.terminate()
        server.wait(timeout=10)


def browse(url: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        f"--user-data-dir={profile}",
    ]
    return subprocess.run(
        [chromium(), *flags, *args, url], check=True, capture_output=True, text=True, timeout=120
    )


def screenshot(url: str, out: Path, profile: Path) -> bytes:
    browse(url, profile, f"--screenshot={out}", "--window-size=1280,1600")
    data = out.read_bytes()
    keep = os.environ.get("DEQKIT_DOCS_SHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(out, Path(keep) / out.name)
    return data


def test_getting_started_in_chromium(served, tmp_path):
    base, _ = served
    url = f"{base}/getting-started.html"
    shot = screenshot(url, tmp_path / "getting-started.png", tmp_path / "profile-shot")
    assert shot[:8] == PNG and len(shot) > 30_000  # a rendered page, not a blank one
    dom = browse(url, tmp_path / "profile-dom", "--dump-dom").stdout
    # the navigation: every section of the site, the current page marked
    assert 'class="md-nav md-nav--primary"' in dom
    for title in ("Getting started", "Solving z = f(z)", "Gradients and recipes", "Results"):
        assert title in dom, title
    assert "md-nav__link--active" in dom
    assert 'href="api/deqkit.html"' in dom
    # a highlighted Python code block with the example, and Material's copy button
    assert 'class="language-python highlight"' in dom
    assert 'deqkit</span><span class="o">.</span><span class="n">DEQ' in dom
    # the copy button, which the theme's script adds to every code block: the scripts ran
    assert "md-code__button" in dom or "md-clipboard" in dom


def test_api_page_in_chromium(served, tmp_path):
    base, _ = served
    url = f"{base}/api/deqkit.html"
    shot = screenshot(url, tmp_path / "api-deqkit.png", tmp_path / "profile-shot")
    assert shot[:8] == PNG and len(shot) > 30_000
    dom = browse(url, tmp_path / "profile-dom", "--dump-dom").stdout
    assert 'id="deqkit.DEQ"' in dom and 'id="deqkit.solve"' in dom
    # a rendered docstring: its summary, its Args as a parameters table, its maths as MathML
    assert "A deep equilibrium layer" in dom
    assert "Solve <code>z = f(z)</code> for a batch of samples" in dom
    assert "doc-section-title" in dom
    assert re.search(r"<td>\s*<code>max_iter</code>\s*</td>", dom)  # DEQ's Args table
    assert "<math" in dom
    assert "md-nav__link--active" in dom


def test_search_index_is_served(served):
    base, _ = served
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    conn.request("GET", "/search/search_index.json")
    response = conn.getresponse()
    assert response.status == 200 and b"Anderson" in response.read()
